/* The subcommands of starring-bench; main.c dispatches to them by name. Each
 * takes argv from its own name on and returns the process exit status. */
#ifndef SR_BENCH_COMMANDS_H
#define SR_BENCH_COMMANDS_H

/* attention.c: prefill and decode attention against OpenBLAS and the ceilings */
int srb_cmd_attention(int argc, char **argv);

/* model.c: a GGUF model's prompt and generation tokens/s */
int srb_cmd_model(int argc, char **argv);

/* transport.c: latency and bandwidth of mpi, ucx and tcp between 2 ranks */
int srb_cmd_transport(int argc, char **argv);

/* ceiling.c: hidden; the sgemm ceiling in this process's environment */
int srb_cmd_sgemm_ceiling(int argc, char **argv);

#endif
