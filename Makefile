# pdelta build. `make` builds bin/pdelta, bin/pdeltad, bin/pdeltactl and libpdelta.
# Sources are picked up by wildcard: common/*.c, server/*.c, client/lib/*.c,
# tests/unit/test_*.c, tests/fuzz/fuzz_*.c. SANITIZER=address|undefined|thread
# builds everything under build/<sanitizer>/ with bins in build/<sanitizer>/bin.

PREFIX ?= /usr/local
CC ?= cc
SANITIZER ?=
PKGS := libevent libevent_openssl libevent_pthreads openssl zlib libdeflate libisal sqlite3 libcurl libpq

# PERTURB=1: a test-only variant (build/perturb/bin) whose engine answers one
# value wrong when $$PD_TEST_PERTURB is set, for the shadow-verification test.
PERTURB ?=
VARIANT := $(if $(SANITIZER),$(SANITIZER),$(if $(PERTURB),perturb,release))
BUILD := build/$(VARIANT)
BINDIR := $(if $(SANITIZER)$(PERTURB),$(BUILD)/bin,bin)

WARN := -Wall -Wextra -Wformat=2 -Wstrict-prototypes -Wshadow -Wpointer-arith \
	-Wcast-qual -Wwrite-strings -Wvla -Wmissing-prototypes -Wno-unused-parameter -Werror
# Release builds use link-time optimisation: the engine's calls into pd_state
# (index lookups, prefetches) get inlined; heap-large core ~10 % faster. Fat
# objects: libpdelta.a still links with compilers that do not read GCC LTO.
OPT := $(if $(SANITIZER),-O1 -fno-omit-frame-pointer -fsanitize=$(SANITIZER),-O2 -flto=auto -ffat-lto-objects)
ifeq ($(SANITIZER),undefined)
OPT += -fno-sanitize-recover=all
endif
ifeq ($(SANITIZER),address)
OPT += -fsanitize=undefined -fno-sanitize-recover=all
endif
# libsystemd is optional: with it pdeltad speaks sd_notify (Type=notify,
# WatchdogSec); SYSTEMD=no builds without it even when it is installed.
SYSTEMD ?= $(if $(shell pkg-config --exists libsystemd 2>/dev/null && echo y),yes,no)
# Only pdeltad (and what links the server library) gets -lsystemd.
ifeq ($(SYSTEMD),yes)
SYSTEMD_CFLAGS := -DPD_HAVE_SYSTEMD $(shell pkg-config --cflags libsystemd)
SYSTEMD_LIBS := $(shell pkg-config --libs libsystemd)
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(SYSTEMD_CFLAGS)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS ?= -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC $(OPT) $(WARN) $(CFLAGS) $(if $(PERTURB),-DPD_TEST_PERTURB) \
	-Icommon -Iproto -Iclient -Iserver $(PKG_CFLAGS) -MMD -MP
LDFLAGS_ALL := $(OPT) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread -lm

COMMON_SRC := $(wildcard common/*.c)
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
CLIENT_SRC := $(wildcard client/lib/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
TOOL_SRC := $(wildcard tests/bench/*.c) $(wildcard tests/tools/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
COMMON_OBJ := $(call obj,$(COMMON_SRC))
SERVER_OBJ := $(call obj,$(SERVER_SRC))
CLIENT_OBJ := $(call obj,$(CLIENT_SRC))

LIBCOMMON := $(BUILD)/libpdcommon.a
LIBSERVER := $(BUILD)/libpdserver.a
LIBPDELTA_A := $(BUILD)/libpdelta.a
LIBPDELTA_SO := $(BUILD)/libpdelta.so

PROGS := $(BINDIR)/pdelta
ifneq ($(wildcard server/main.c),)
PROGS += $(BINDIR)/pdeltad
endif
ifneq ($(wildcard client/pdeltactl.c),)
PROGS += $(BINDIR)/pdeltactl
endif
UNIT_BINS := $(patsubst %.c,$(BUILD)/%,$(UNIT_SRC))
TOOL_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TOOL_SRC))

.PHONY: all check unit integration bench bench-scrape bench-store fuzz fuzz-short fuzz-build demo install clean valgrind tsan tools man
all: $(PROGS) $(LIBPDELTA_A) $(LIBPDELTA_SO) tools man

# Man pages: doc/man/*.in with the built programs' --help (and client/pdelta.h)
# pasted in by doc/man/gen-man.sh, so they cannot drift from the programs.
MAN_IN := $(wildcard doc/man/*.in)
MANDIR := $(BUILD)/man
MAN_PAGES := $(patsubst doc/man/%.in,$(MANDIR)/%,$(MAN_IN))
man: $(MAN_PAGES)
$(MAN_PAGES) &: $(MAN_IN) doc/man/gen-man.sh $(PROGS) client/pdelta.h
	@bash doc/man/gen-man.sh $(BINDIR) $(MANDIR)

tools: $(TOOL_BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIBCOMMON): $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBSERVER): $(SERVER_OBJ) $(call obj,common/pd_err.c)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBPDELTA_A): $(CLIENT_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBPDELTA_SO): $(CLIENT_OBJ) $(COMMON_OBJ) client/libpdelta.map
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,libpdelta.so.1 -Wl,--version-script=client/libpdelta.map $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(LIBS)

# client/pdelta_cliopt.c: what the command-line programs (and the client_run test tool) share.
CLIOPT_OBJ := $(call obj,client/pdelta_cliopt.c)
PDELTA_CLI_SRC := client/pdelta_cli.c client/pdelta_send.c client/pdelta_scrape.c client/pdelta_cliopt.c
$(BINDIR)/pdelta: $(call obj,$(PDELTA_CLI_SRC)) $(LIBPDELTA_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

# Rebuild what reads PD_HAVE_SYSTEMD when SYSTEMD=yes/no changes.
$(BUILD)/systemd.flag: FORCE
	@mkdir -p $(dir $@)
	@echo $(SYSTEMD) | cmp -s - $@ || echo $(SYSTEMD) >$@
$(call obj,server/pd_notify.c): $(BUILD)/systemd.flag
.PHONY: FORCE
FORCE:

$(BINDIR)/pdeltad: $(call obj,server/main.c) $(LIBSERVER) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS) $(SYSTEMD_LIBS)

$(BINDIR)/pdeltactl: $(call obj,client/pdeltactl.c) $(CLIOPT_OBJ) $(LIBPDELTA_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(BUILD)/tests/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIBSERVER) $(LIBPDELTA_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS) $(SYSTEMD_LIBS)

$(BUILD)/tests/tools/client_run: $(BUILD)/tests/tools/client_run.o $(CLIOPT_OBJ) $(LIBPDELTA_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

# ---- tests ---------------------------------------------------------------
unit: $(UNIT_BINS)
	@bash tests/run_unit.sh $(UNIT_BINS)

check: all $(UNIT_BINS)
	@BINDIR=$(BINDIR) BUILD=$(BUILD) bash tests/run_all.sh

# memcheck over the unit tests, the pdelta CLI, and the client library against
# a real server. The store tests are skipped: their spinning reader threads
# starve the writer under valgrind's serialised threads (minutes, not seconds);
# they run under ASan and TSan instead.
valgrind: all $(UNIT_BINS)
	@VALGRIND_SKIP="test_store_crash test_store $(VALGRIND_SKIP)" BINDIR=$(BINDIR) BUILD=$(BUILD) \
		bash tests/run_valgrind.sh $(UNIT_BINS)
	@CLIENT_VALGRIND=1 ONLY=valgrind BINDIR=$(BINDIR) BUILD=$(BUILD) \
		bash tests/integration/test_client_server.sh

# ThreadSanitizer over the server's threaded paths (store, service, server).
tsan:
	@$(MAKE) -s SANITIZER=thread all build/thread/tests/unit/test_store build/thread/tests/unit/test_service
	@build/thread/tests/unit/test_store && build/thread/tests/unit/test_service && \
		BINDIR=build/thread/bin BUILD=build/thread bash tests/integration/test_server_basic.sh

# ---- fuzzing (clang + libFuzzer) ------------------------------------------
FUZZ_CC ?= clang
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	-Icommon -Iproto -Iserver $(PKG_CFLAGS)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
build/fuzz/%: tests/fuzz/%.c $(COMMON_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(COMMON_SRC) -lz -ldeflate -lisal
# fuzz_conn drives the real connection code over a socketpair (TLS, frames,
# service, engine, store): it also needs the server and its libraries.
FUZZ_SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
build/fuzz/fuzz_conn: tests/fuzz/fuzz_conn.c $(COMMON_SRC) $(FUZZ_SERVER_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DPD_FUZZ_WITH_SERVER -o $@ $< $(FUZZ_SERVER_SRC) $(COMMON_SRC) \
		$(PKG_LIBS) $(SYSTEMD_LIBS) -lpthread -lm
# fuzz_scrape_files reads the scrape agent's targets and state files: it also
# needs those two files of the client library (it supplies the loop's clock
# and log itself, so the rest of libpdelta stays out of the link).
FUZZ_SCRAPE_SRC := client/lib/pdl_scrape_files.c client/lib/pdl_scrape_targets.c
build/fuzz/fuzz_scrape_files: tests/fuzz/fuzz_scrape_files.c $(COMMON_SRC) $(FUZZ_SCRAPE_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -Iclient -o $@ $< $(FUZZ_SCRAPE_SRC) $(COMMON_SRC) \
		-lcurl -lz -ldeflate -lisal -lpthread
fuzz-build: $(FUZZ_BINS)
fuzz-short: $(FUZZ_BINS)
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-20} bash tests/fuzz/run.sh $(FUZZ_BINS)
fuzz: $(FUZZ_BINS)
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-600} bash tests/fuzz/run.sh $(FUZZ_BINS)

bench: all
	@BINDIR=$(BINDIR) BUILD=$(BUILD) bash tests/bench/run.sh

# The scrape agent's footprint against the Go way, side by side (about a minute).
bench-scrape: all
	@BINDIR=$(BINDIR) BUILD=$(BUILD) bash tests/bench/scrape_footprint.sh

# pdeltad on SQLite, on PostgreSQL, and three nodes on one PostgreSQL, side by side (about
# two minutes; needs PostgreSQL's server binaries, as make check does).
bench-store: all tools
	@BINDIR=$(BINDIR) BUILD=$(BUILD) bash tests/bench/store_nodes.sh

demo:
	@bash deploy/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(PROGS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBPDELTA_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBPDELTA_SO) $(DESTDIR)$(PREFIX)/lib/libpdelta.so.1
	ln -sf libpdelta.so.1 $(DESTDIR)$(PREFIX)/lib/libpdelta.so
	install -m 644 client/pdelta.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|g' client/pdelta.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/pdelta.pc
	for s in 1 3 8; do install -d $(DESTDIR)$(PREFIX)/share/man/man$$s && \
		install -m 644 $(MANDIR)/*.$$s $(DESTDIR)$(PREFIX)/share/man/man$$s/ || exit 1; done
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/share/doc/pdelta
	sed -e 's|/usr/local/|$(PREFIX)/|g' deploy/pdeltad.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/pdeltad.service
	install -m 644 deploy/pdeltad.conf.example deploy/tenants.example README.md $(DESTDIR)$(PREFIX)/share/doc/pdelta/

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)
