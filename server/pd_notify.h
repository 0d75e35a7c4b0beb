/*
 * pd_notify: readiness and liveness for the service manager (systemd
 * Type=notify): READY=1 once the listeners are open, STOPPING=1 when a drain
 * starts, WATCHDOG=1 at half the unit's WatchdogSec while the event loop
 * turns. Built on libsystemd's sd_notify() when the build found libsystemd
 * (pkg-config); otherwise every call is a no-op and pd_notify_available()
 * says so (`pdeltad --version`). Without $NOTIFY_SOCKET the calls do nothing.
 */
#ifndef PD_NOTIFY_H
#define PD_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

bool pd_notify_available(void);
void pd_notify_ready(const char *status);
void pd_notify_stopping(void);
void pd_notify_watchdog(void);
/* The watchdog period the manager asked for, in microseconds; 0 = none. */
uint64_t pd_notify_watchdog_usec(void);

#endif
