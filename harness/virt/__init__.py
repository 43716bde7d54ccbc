"""The libvirt driver (``--driver libvirt``): the same guests and scenarios, driven through
libvirt instead of QEMU's monitor.

* :mod:`harness.virt.xml`: a guest's shape as a transient domain's XML, and each device the
  roles hot-add as the XML libvirt attaches (or the reason libvirt cannot express it);
* :mod:`harness.virt.connect`: the connection to the real daemon (``qemu:///system``), its
  failures as harness errors, and libvirt's event loop (``device-removed``);
* :mod:`harness.virt.domain`: :class:`~harness.virt.domain.DomainGuest`, a
  :class:`~harness.guest.guest.Guest` whose QEMU libvirt starts, whose hot-add and removal go
  through ``attach-device`` / ``detach-device-alias``, and whose monitor-side view is read
  through libvirt (the live XML, and ``qemu-monitor-command``).
"""
