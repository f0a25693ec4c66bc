/*
 * The container's network and what docker gives every container beside its
 * mounts, in container mode.
 */
#ifndef VMFACTORY_NETWORK_H
#define VMFACTORY_NETWORK_H

#include "conf.h"
#include "container.h"

/* lo up; with a network, eth0's address and the default route. */
int vmf_configure_network(const struct vmf_run *run, struct vmf_error *e);
/* Open files up to 1048576, ports below 1024 and ping sockets for every user. */
void vmf_container_defaults(void);

#endif
