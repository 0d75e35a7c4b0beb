/* pd_version: the --version line of the three programs. See pd_version.h. */
#include "pd_version.h"

#include <isa-l.h>
#include <libdeflate.h>
#include <string.h>
#include <zlib.h>

#include "pdelta_proto.h"

/* __DATE__ ("Dec  3 2025") as 2025-12-03. */
static void build_date(char out[16])
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	const char *d = __DATE__, *m = strstr(months, (char[4]){d[0], d[1], d[2], 0});
	int mon = m ? (int)(m - months) / 3 + 1 : 0, day = (d[4] == ' ' ? 0 : d[4] - '0') * 10 + d[5] - '0';

	snprintf(out, 16, "%.4s-%02d-%02d", d + 7, mon % 100, day % 100);
}

static const char *compiler(void)
{
#if defined(__clang__)
	return "clang " __clang_version__;
#elif defined(__GNUC__)
	return "gcc " __VERSION__;
#else
	return "cc";
#endif
}

void pd_version_print(FILE *f, const char *prog, const char *libs)
{
	char date[16];

	build_date(date);
	fprintf(f,
		"%s %s (protocol %d..%d; built %s %s; %s%szlib %s, libdeflate %s, ISA-L %d.%d.%d)\n",
		prog, PD_VERSION, PD_PROTO_VERSION_MIN, PD_PROTO_VERSION, date, compiler(),
		libs ? libs : "", libs ? ", " : "", zlibVersion(), LIBDEFLATE_VERSION_STRING,
		ISAL_MAJOR_VERSION, ISAL_MINOR_VERSION, ISAL_PATCH_VERSION);
}
