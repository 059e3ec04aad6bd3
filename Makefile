# statusgw: `make` builds, `make run` starts the gateway on the shipped config,
# `make test` installs what is missing, builds, and runs every spec.

PKGS    := lua5.4 libevent jansson openssl libcurl libjwt sqlite3 hiredis
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter
DEPS_OK := $(shell pkg-config --exists $(PKGS) 2>/dev/null && test -f /usr/include/http_parser.h && test -f /usr/include/wslay/wslay.h && echo yes)
PCFLAGS  = $(shell pkg-config --cflags $(PKGS))
PLIBS    = $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lwslay -lm -lpthread
PREFIX  ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc/statusgw
STATEDIR   ?= /var/lib/statusgw

SRCS    := $(wildcard src/*.c)
DAEMON  := $(filter-out src/lmodel.c src/lplugin.c,$(SRCS))
OBJS     = $(patsubst src/%.c,build/obj/%.o,$(DAEMON))
AOBJS    = $(patsubst src/%.c,build/asan/obj/%.o,$(DAEMON))
ASAN    := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined

.PHONY: all asan run test clean install uninstall deps bench bench-tools fuzz fuzz-build check-layers

all: deps build/statusgw build/statusgw_model.so build/statusgw_plugin.so build/loadgen build/internals build/connections

deps:
ifneq ($(DEPS_OK),yes)
	@scripts/install-deps
endif

build/statusgw: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(PLIBS)

build/obj/%.o: src/%.c $(wildcard src/*.h) | build/obj
	$(CC) $(WARN) $(CFLAGS) $(PCFLAGS) -MMD -c -o $@ $<

# The dashboard's page is in the binary (src/dashboard.c: .incbin).
build/obj/dashboard.o build/asan/obj/dashboard.o build/fuzz/obj/dashboard.o: dashboard/index.html

# The model as a Lua module, so unit specs exercise the real C validation.
MODEL_SRCS := src/lmodel.c src/status.c src/jtext.c src/log.c src/clock.c
build/statusgw_model.so: $(MODEL_SRCS) $(wildcard src/*.h) | build/obj
	$(CC) $(WARN) $(CFLAGS) $(PCFLAGS) -fPIC -shared -o $@ $(MODEL_SRCS) $(PLIBS)

# The plugin host as a Lua module: plugin specs run the real C host.
PLUGIN_SRCS := src/lplugin.c src/plugin.c src/sandbox.c src/luajson.c src/lazy.c src/hostapi.c src/lpattern.c src/status.c src/jtext.c src/config.c src/log.c src/clock.c
build/statusgw_plugin.so: $(PLUGIN_SRCS) $(wildcard src/*.h) | build/obj
	$(CC) $(WARN) $(CFLAGS) $(PCFLAGS) -fPIC -shared -o $@ $(PLUGIN_SRCS) $(PLIBS)

asan: deps build/asan/statusgw build/asan/statusgw_model.so build/asan/statusgw_plugin.so build/asan/internals build/asan/connections

build/asan/statusgw: $(AOBJS)
	$(CC) $(ASAN) -o $@ $^ $(PLIBS)

# The Lua modules too, for the unit specs (scripts/test preloads the runtime).
build/asan/statusgw_model.so: $(MODEL_SRCS) $(wildcard src/*.h) | build/asan/obj
	$(CC) $(WARN) $(ASAN) $(PCFLAGS) -fPIC -shared -o $@ $(MODEL_SRCS) $(PLIBS)

build/asan/statusgw_plugin.so: $(PLUGIN_SRCS) $(wildcard src/*.h) | build/asan/obj
	$(CC) $(WARN) $(ASAN) $(PCFLAGS) -fPIC -shared -o $@ $(PLUGIN_SRCS) $(PLIBS)

build/asan/obj/%.o: src/%.c $(wildcard src/*.h) | build/asan/obj
	$(CC) $(WARN) $(ASAN) $(PCFLAGS) -c -o $@ $<

# every object waits for deps (make -j would otherwise compile before the
# headers are installed)
build/obj build/asan/obj build/fuzz/obj: | deps
	@mkdir -p $@

# C unit tests of the internals (spec/c): the daemon's modules without main.
build/internals build/connections: build/%: spec/c/%.c spec/c/tap.h $(filter-out build/obj/main.o,$(OBJS))
	$(CC) $(WARN) $(CFLAGS) $(PCFLAGS) -Isrc -o $@ $(filter-out %.h,$^) $(PLIBS)

build/asan/internals build/asan/connections: build/asan/%: spec/c/%.c spec/c/tap.h $(filter-out build/asan/obj/main.o,$(AOBJS))
	$(CC) $(WARN) $(ASAN) $(PCFLAGS) -Isrc -o $@ $(filter-out %.h,$^) $(PLIBS)

# Fuzz targets (fuzz/fuzz_gateway.c): clang's libFuzzer with address and
# undefined-behaviour sanitizers, the daemon's modules instrumented for
# coverage. `make fuzz [FUZZ_SECONDS=60]` runs each target that long on its
# corpus in fuzz/corpus/<target>; `make test` runs each briefly.
FUZZ_TARGETS := http ws sse publish jwt luajson redis
FUZZ_FLAGS   := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined
FT_http := 1
FT_ws := 2
FT_sse := 3
FT_publish := 4
FT_jwt := 5
FT_luajson := 6
FT_redis := 7
FOBJS = $(patsubst src/%.c,build/fuzz/obj/%.o,$(filter-out src/main.c,$(DAEMON)))
FUZZ_SECONDS ?= 60

fuzz-build: $(patsubst %,build/fuzz/fuzz_%,$(FUZZ_TARGETS))

# the instrumented objects are kept between builds (make would otherwise
# treat them as intermediate files and delete them)
.SECONDARY: $(FOBJS)

build/fuzz/obj/%.o: src/%.c $(wildcard src/*.h) | build/fuzz/obj
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(PCFLAGS) -c -o $@ $<

build/fuzz/fuzz_%: fuzz/fuzz_gateway.c $(FOBJS)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer -DFUZZ_TARGET=$(FT_$*) -Isrc $(PCFLAGS) -o $@ $< $(FOBJS) $(PLIBS)

fuzz: fuzz-build
	scripts/fuzz $(FUZZ_SECONDS)

# The load generator (contrib/loadgen) and the benchmarks (scripts/bench).
bench-tools: build/loadgen build/plugbench

build/loadgen: contrib/loadgen/loadgen.c src/evread.h | build/obj
	$(CC) -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -O2 -o $@ $< $(shell pkg-config --libs libevent)

# plugbench: the plugin host's cost per update, in process (no network)
build/plugbench: contrib/plugbench/plugbench.c $(filter-out build/obj/main.o,$(OBJS))
	$(CC) $(WARN) $(CFLAGS) $(PCFLAGS) -Isrc -o $@ $^ $(PLIBS)

bench: all bench-tools
	scripts/bench

# No include cycle among src/ modules (also part of the unit specs).
check-layers:
	lua5.4 /usr/bin/busted spec/unit/layers_spec.lua

run: all
	./build/statusgw --config etc/statusgw.lua

test:
	@scripts/install-deps --test
	@$(MAKE) --no-print-directory all asan
	@scripts/test

# make install [PREFIX=/usr/local] [DESTDIR=…]: the binary, the plugin host
# as a Lua module (statusgw plugin test), the plugins and their sample,
# a config that finds them (an existing config is kept; the new one is put
# beside it as statusgw.lua.new), and a systemd unit with these paths.
INSTALLED_CONFIG = sed -e 's|^  plugins_dir = .*|  plugins_dir = "$(PREFIX)/share/statusgw/plugins",|' \
	-e 's|^  store_path = .*|  store_path = "$(STATEDIR)/statusgw.db",|' \
	-e 's|^    -- dead_letter_file = .*|    dead_letter_file = "$(STATEDIR)/statusgw-dead-letters.jsonl",|' etc/statusgw.lua

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/statusgw/plugins/samples \
		$(DESTDIR)$(PREFIX)/share/statusgw/plugins/contrib $(DESTDIR)$(SYSCONFDIR) \
		$(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/lib/statusgw
	install -m 755 build/statusgw $(DESTDIR)$(PREFIX)/bin/statusgw
	install -m 644 build/statusgw_plugin.so $(DESTDIR)$(PREFIX)/lib/statusgw/statusgw_plugin.so
	install -m 644 plugins/*.lua plugins/README.md $(DESTDIR)$(PREFIX)/share/statusgw/plugins/
	install -m 644 plugins/samples/* $(DESTDIR)$(PREFIX)/share/statusgw/plugins/samples/
	install -m 644 plugins/contrib/* $(DESTDIR)$(PREFIX)/share/statusgw/plugins/contrib/
	@if [ -f $(DESTDIR)$(SYSCONFDIR)/statusgw.lua ]; then \
		$(INSTALLED_CONFIG) > $(DESTDIR)$(SYSCONFDIR)/statusgw.lua.new; \
		echo "install: kept $(DESTDIR)$(SYSCONFDIR)/statusgw.lua; the new default is statusgw.lua.new"; \
	else \
		$(INSTALLED_CONFIG) > $(DESTDIR)$(SYSCONFDIR)/statusgw.lua; \
	fi
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' contrib/systemd/statusgw.service.in \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/statusgw.service
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' 'contrib/systemd/statusgw@.service.in' \
		> '$(DESTDIR)$(PREFIX)/lib/systemd/system/statusgw@.service'
	@echo "install: run $(PREFIX)/bin/statusgw --config $(SYSCONFDIR)/statusgw.lua"

# The config is removed only when it is still the one install wrote.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/statusgw $(DESTDIR)$(PREFIX)/lib/systemd/system/statusgw.service \
		'$(DESTDIR)$(PREFIX)/lib/systemd/system/statusgw@.service' \
		$(DESTDIR)$(SYSCONFDIR)/statusgw.lua.new
	rm -rf $(DESTDIR)$(PREFIX)/share/statusgw $(DESTDIR)$(PREFIX)/lib/statusgw
	@if [ -f $(DESTDIR)$(SYSCONFDIR)/statusgw.lua ] && $(INSTALLED_CONFIG) | cmp -s - $(DESTDIR)$(SYSCONFDIR)/statusgw.lua; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/statusgw.lua; rmdir $(DESTDIR)$(SYSCONFDIR) 2>/dev/null || true; \
	elif [ -f $(DESTDIR)$(SYSCONFDIR)/statusgw.lua ]; then \
		echo "uninstall: kept $(DESTDIR)$(SYSCONFDIR)/statusgw.lua (changed since install)"; \
	fi

clean:
	rm -rf build

-include $(wildcard build/obj/*.d)
