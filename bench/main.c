/* starring-bench: benchmarks of starring's parts. One subcommand per part;
 * add a line to the table to add one. */
#include <stdio.h>
#include <string.h>

#include "bench/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help; /* NULL: hidden (used by the benchmarks themselves) */
} command;

static const command commands[] = {
    {"attention", srb_cmd_attention,
     "attention prefill and decode: GFLOP/s and GB/s against an OpenBLAS baseline and the "
     "machine's ceilings"},
    {"model", srb_cmd_model, "a GGUF model's prompt and generated tokens/s (-m MODEL)"},
    {"transport", srb_cmd_transport, "latency and bandwidth of mpi, ucx and tcp, 8 B to 64 MiB (mpirun -np 2)"},
    {"sgemm-ceiling", srb_cmd_sgemm_ceiling, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: starring-bench COMMAND [options]   (starring-bench COMMAND --help)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].help) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "starring-bench: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
