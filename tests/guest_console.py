"""A guest's keyboard for tests: lines typed on its serial console through
libvirt (virDomainOpenConsole on a stream), the way `virsh console` does it.
What the guest prints is read from its console log, as everywhere else.

The guest image's console waits for Enter before it starts a root shell
(images/rootfs/sbin/init), so `GuestConsole.shell()` presses it first.
"""

from __future__ import annotations

import time

import libvirt


class GuestConsole:
    def __init__(self, instance_id: str, uri: str = "qemu:///system"):
        self.conn = libvirt.open(uri)
        domain = self.conn.lookupByUUIDString(instance_id)
        # Non-blocking, and never read: the output goes to the log anyway.
        self.stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        domain.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)

    def type(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            sent = self.stream.send(data)
            if sent == -2:  # would block: the pty is full for now
                time.sleep(0.05)
                continue
            data = data[sent:]

    def shell(self) -> GuestConsole:
        """Press Enter at the "Please press Enter" prompt and give the shell a moment."""
        self.type("")
        time.sleep(1.5)
        return self

    def close(self) -> None:
        try:
            self.stream.abort()
        except libvirt.libvirtError:
            pass
        self.conn.close()

    def __enter__(self) -> GuestConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
