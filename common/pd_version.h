/*
 * pd_version: the one version of pdelta, and the `--version` line that
 * pdelta, pdeltactl and pdeltad all print:
 *
 *   pdeltad 1.2.0 (protocol 1..3; built 2025-12-03 gcc 12.2.0; OpenSSL 3.0.19,
 *                  libevent 2.1.12-stable, SQLite 3.40.1, zlib 1.2.13, libdeflate 1.14, ISA-L 2.30.0)
 *
 * The protocol range is PD_PROTO_VERSION_MIN..PD_PROTO_VERSION
 * (proto/pdelta_proto.h). The public header client/pdelta.h repeats
 * PD_VERSION as PDELTA_VERSION, and client/pdelta.pc.in as Version:
 * tests/integration/test_client_local.sh checks that the three agree.
 */
#ifndef PD_VERSION_H
#define PD_VERSION_H

#include <stdio.h>

#define PD_VERSION "1.2.0"

/* Prints "<prog> <version> (protocol A..B; built <date> <compiler>; <libs>, <codec libs>)"
 * and a newline. libs: the program's own libraries ("OpenSSL 3.0.19, ..."), or NULL; the
 * compression libraries every program links are appended. */
void pd_version_print(FILE *f, const char *prog, const char *libs);

#endif
