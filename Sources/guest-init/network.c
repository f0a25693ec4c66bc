/*
 * The container's network (network.h): lo, and eth0 as vmfactory's settings
 * give it, as ioctls (the image need not have ip or ifconfig).
 */
#define _GNU_SOURCE
#include "network.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rootfs.h"

static int set_address(int sock, const char *interface, unsigned long request, const char *address)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	struct sockaddr_in *in = (struct sockaddr_in *)&ifr.ifr_addr;
	in->sin_family = AF_INET;
	if (inet_pton(AF_INET, address, &in->sin_addr) != 1) {
		errno = EINVAL;
		return -1;
	}
	return ioctl(sock, request, &ifr);
}

static int bring_up(int sock, const char *interface)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", interface);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

int vmf_configure_network(const struct vmf_run *run, struct vmf_error *e)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		vmf_say(VMF_TAG "no IPv4 sockets: %s\n", strerror(errno));
		return 0;
	}
	/* The kernel gives lo 127.0.0.1 when it comes up. */
	if (bring_up(sock, "lo") != 0)
		vmf_say(VMF_TAG "cannot bring lo up: %s\n", strerror(errno));
	if (run->network) {
		if (!run->address || !run->netmask) {
			close(sock);
			return vmf_fail(e, 125, "the settings give a network device but no address or netmask");
		}
		if (vmf_wait_for("/sys/class/net/eth0", e) != 0) {
			close(sock);
			return -1;
		}
		if (set_address(sock, "eth0", SIOCSIFADDR, run->address) != 0
		    || set_address(sock, "eth0", SIOCSIFNETMASK, run->netmask) != 0
		    || bring_up(sock, "eth0") != 0) {
			int saved = errno;
			close(sock);
			return vmf_fail(e, 125, "cannot configure eth0 as %s/%s: %s", run->address, run->netmask, strerror(saved));
		}
		if (!run->gateway) {
			close(sock);
			return 0;
		}
		struct rtentry route;
		memset(&route, 0, sizeof(route));
		struct sockaddr_in *gateway = (struct sockaddr_in *)&route.rt_gateway;
		gateway->sin_family = AF_INET;
		inet_pton(AF_INET, run->gateway, &gateway->sin_addr);
		((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		if (ioctl(sock, SIOCADDRT, &route) != 0 && errno != EEXIST) {
			int saved = errno;
			close(sock);
			return vmf_fail(e, 125, "cannot add the default route via %s: %s", run->gateway, strerror(saved));
		}
	}
	close(sock);
	return 0;
}

/*
 * What docker gives every container beside its mounts: open files up to 1048576 (dockerd's own
 * limit, which its containers inherit), ports below 1024 and ping sockets for every user (the
 * two sysctls it sets unless the container shares the host's network).
 */
void vmf_container_defaults(void)
{
	struct rlimit files = {1048576, 1048576};
	if (setrlimit(RLIMIT_NOFILE, &files) != 0)
		vmf_say(VMF_TAG "cannot raise the open-file limit: %s\n", strerror(errno));
	const char *settings[][2] = {
		{"/proc/sys/net/ipv4/ip_unprivileged_port_start", "0\n"},
		{"/proc/sys/net/ipv4/ping_group_range", "0 2147483647\n"},
	};
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		int fd = open(settings[i][0], O_WRONLY | O_CLOEXEC);
		if (fd < 0 || vmf_write_all(fd, settings[i][1], strlen(settings[i][1])) != strlen(settings[i][1]))
			vmf_say(VMF_TAG "cannot set %s: %s\n", settings[i][0] + strlen("/proc/sys/"), strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}
