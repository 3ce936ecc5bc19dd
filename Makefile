# starring build.
#   make              CPU build, host vector extensions (-march=native)
#   make PORTABLE=1   CPU build for any x86-64 (scalar fallbacks; into build-portable/)
#   make SAN=1        ASan+UBSan build (into build-san/)
#   make CUDA=1       also the CUDA kernels (sm_80, sm_90) and NCCL (into build-cuda/)
#   make test         builds, then runs every test (tests/run)
#   make fuzz         libFuzzer targets (clang) into build-fuzz/
#   make install      programs, systemd units, example config and docs under
#                     $(DESTDIR)$(PREFIX) (PREFIX=/usr/local; the config under
#                     $(DESTDIR)$(SYSCONFDIR)/starring, SYSCONFDIR=/etc)
#
# Sources are found by folder: every .c in the folders of MODULES goes into
# libstarring.a (a folder joins MODULES once it has code); each
# tests/unit/test_*.c is a test binary; programs are listed in PROGRAMS below.
# The C of every proto/**/*.proto is generated with protoc-c into
# $(BUILD)/gen and joins the library too.

CC      ?= cc
NVCC    ?= nvcc
CUDA_HOME ?= /usr/local/cuda

ifeq ($(SAN),1)
  BUILD ?= build-san
  ifeq ($(CUDA),1)
    $(error SAN=1 and CUDA=1 together are not supported: build them separately)
  endif
  OPT   := -O1 -g -march=native -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDSAN := -fsanitize=address,undefined
else ifeq ($(PORTABLE),1)
  BUILD ?= build-portable
  OPT   := -O3 -g -march=x86-64 -mtune=generic
else ifeq ($(CUDA),1)
  BUILD ?= build-cuda
  OPT   := -O3 -g -march=native
else
  BUILD ?= build
  OPT   := -O3 -g -march=native
endif

CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration \
           -fopenmp $(OPT) -I.
LDFLAGS += -fopenmp $(LDSAN)
LDLIBS  += -lopenblas -lpcre2-8 -lsodium -lprotobuf-c -luv -lnghttp2 -lhttp_parser -ljansson -lsystemd -lm -lpthread
# Open MPI: the mpi transport lives in the library, so everything links it
MPICC   ?= mpicc
MPI_CFLAGS := $(shell $(MPICC) --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null)
ifeq ($(strip $(MPI_LIBS)),)
  $(error '$(MPICC) --showme:link' gave nothing: install Open MPI (scripts/install-deps, or apt-get install libopenmpi-dev openmpi-bin) or set MPICC)
endif
CFLAGS  += $(MPI_CFLAGS)
LDLIBS  += $(MPI_LIBS)
# UCX (the ucx transport, also in the library)
UCX_LIBS := $(shell pkg-config --libs ucx 2>/dev/null)
ifeq ($(strip $(UCX_LIBS)),)
  $(error 'pkg-config --libs ucx' gave nothing: install libucx-dev (scripts/install-deps))
endif
CFLAGS  += $(shell pkg-config --cflags ucx)
LDLIBS  += $(UCX_LIBS)

ifeq ($(CUDA),1)
  CFLAGS  += -DSR_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  NVFLAGS := -O3 -std=c++17 -I. -DSR_HAVE_CUDA=1 \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90 \
             -Xcompiler -fPIC,-Wall
  LDLIBS  += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib -lcudart -lnccl -lstdc++
  CU_SRC  := $(wildcard attention/cuda/*.cu)
endif

MODULES  := base gguf attention attention/cpu transport net matmul tokenizer model worker coordinator daemon
LIB_SRC  := $(filter-out %_main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
PROTO    := $(shell find proto -name '*.proto')
PROTO_C  := $(PROTO:proto/%.proto=$(BUILD)/gen/%.pb-c.c)
PROTO_H  := $(PROTO_C:.c=.h)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(PROTO_C:$(BUILD)/gen/%.c=$(BUILD)/obj/gen/%.o) \
            $(CU_SRC:%.cu=$(BUILD)/obj/%.cu.o)
CFLAGS   += -I$(BUILD)/gen
LIB      := $(BUILD)/libstarring.a

# programs: bench/*.c together make starring-bench; each cli/NAME.c is starring-NAME
BENCH_SRC := $(wildcard bench/*.c)
# daemon/starringd_main.c is starringd; clients/c/*.c together make the client starring
CLIENT_SRC := $(wildcard clients/c/*.c)
PROGRAMS  := $(if $(BENCH_SRC),$(BUILD)/starring-bench) $(patsubst cli/%.c,$(BUILD)/starring-%,$(wildcard cli/*.c)) \
             $(if $(wildcard daemon/starringd_main.c),$(BUILD)/starringd) $(if $(CLIENT_SRC),$(BUILD)/starring)

TEST_SRC  := $(wildcard tests/unit/test_*.c)
TEST_SUPPORT := $(filter-out tests/unit/test_%,$(wildcard tests/unit/*.c))
MPI_SUPPORT  := $(filter-out tests/mpi/mpi_test_%,$(wildcard tests/mpi/*.c))
TESTS     := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%) $(patsubst tests/mpi/%.c,$(BUILD)/tests/%,$(wildcard tests/mpi/mpi_test_*.c))
ifeq ($(CUDA),1)
  TESTS   += $(patsubst tests/gpu/%.cu,$(BUILD)/tests/%,$(wildcard tests/gpu/*.cu))
endif

.PHONY: all test clean fuzz install
.SECONDARY:
all: $(LIB) $(PROGRAMS) $(TESTS)

# every object waits for the generated headers (order only: a new .proto
# does not rebuild what does not include it)
$(BUILD)/obj/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/starring-bench: $(BENCH_SRC:%.c=$(BUILD)/obj/%.o) $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/starringd: $(BUILD)/obj/daemon/starringd_main.o $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/starring: $(CLIENT_SRC:%.c=$(BUILD)/obj/%.o) $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/starring-%: $(BUILD)/obj/cli/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

$(BUILD)/tests/mpi_%: $(BUILD)/obj/tests/mpi/mpi_%.o $(MPI_SUPPORT:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/tests/unit/support_model.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

$(BUILD)/tests/%: tests/gpu/%.cu $(LIB)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) $^ -o $@ -Xcompiler -fopenmp $(LDLIBS)

test: all
	BUILD=$(BUILD) tests/run

fuzz:
	$(MAKE) -f tests/fuzz/Makefile

# The units and scripts name /usr/local/bin and /etc/starring: they are
# rewritten for PREFIX and SYSCONFDIR on the way in. An existing
# starringd.conf is kept (it is the admin's); the new one goes beside it.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR     ?= $(PREFIX)/share/doc/starring
DATADIR    ?= $(PREFIX)/share/starring
UNITS      := $(wildcard deploy/*.service)
PATHS_SED  := -e 's|/usr/local/bin|$(BINDIR)|g' -e 's|/usr/local/share/doc/starring|$(DOCDIR)|g' \
              -e 's|/etc/starring|$(SYSCONFDIR)/starring|g'
install: $(PROGRAMS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(DATADIR)/proto $(DESTDIR)$(SYSCONFDIR)/starring
	install -m 755 $(PROGRAMS) $(DESTDIR)$(BINDIR)/
	sed $(PATHS_SED) deploy/starringd-mpirun >$(DESTDIR)$(BINDIR)/starringd-mpirun
	chmod 755 $(DESTDIR)$(BINDIR)/starringd-mpirun
	for u in $(UNITS); do sed $(PATHS_SED) $$u >$(DESTDIR)$(UNITDIR)/$${u#deploy/} || exit 1; done
	install -m 644 deploy/starring.sysusers $(DESTDIR)$(SYSUSERSDIR)/starring.conf
	install -m 644 README.md docs/ARCHITECTURE.md deploy/hosts.example $(DESTDIR)$(DOCDIR)/
	install -m 644 deploy/README.md $(DESTDIR)$(DOCDIR)/deploy.md
	install -m 644 deploy/starringd.conf $(DESTDIR)$(DOCDIR)/starringd.conf.example
	cp -r proto/. $(DESTDIR)$(DATADIR)/proto/
	if [ -e $(DESTDIR)$(SYSCONFDIR)/starring/starringd.conf ]; then \
	    install -m 644 deploy/starringd.conf $(DESTDIR)$(SYSCONFDIR)/starring/starringd.conf.new; \
	else install -m 644 deploy/starringd.conf $(DESTDIR)$(SYSCONFDIR)/starring/starringd.conf; fi

clean:
	rm -rf build build-*

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
