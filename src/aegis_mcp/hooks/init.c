/* libaegis_hooks: LD_PRELOAD library of aegis-mcp.
 * The hooks themselves are added by the network-monitoring and injection work;
 * this file holds the single initialisation point. */
#define _GNU_SOURCE
#include <pthread.h>

static pthread_once_t aegis_once = PTHREAD_ONCE_INIT;

static void aegis_init_once(void) {}

__attribute__((constructor)) static void aegis_init(void) { pthread_once(&aegis_once, aegis_init_once); }
