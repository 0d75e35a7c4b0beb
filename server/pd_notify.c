/*
 * pd_notify: sd_notify() wrappers (pd_notify.h); no-ops without libsystemd.
 */
#include "pd_notify.h"

#ifdef PD_HAVE_SYSTEMD
#include <stdio.h>

#include <systemd/sd-daemon.h>

bool pd_notify_available(void) { return true; }

void pd_notify_ready(const char *status)
{
	sd_notifyf(0, "READY=1\nSTATUS=%s", status ? status : "serving");
}

void pd_notify_stopping(void) { sd_notify(0, "STOPPING=1\nSTATUS=draining"); }

void pd_notify_watchdog(void) { sd_notify(0, "WATCHDOG=1"); }

uint64_t pd_notify_watchdog_usec(void)
{
	uint64_t usec = 0;

	return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}
#else
bool pd_notify_available(void) { return false; }
void pd_notify_ready(const char *status) { (void)status; }
void pd_notify_stopping(void) {}
void pd_notify_watchdog(void) {}
uint64_t pd_notify_watchdog_usec(void) { return 0; }
#endif
