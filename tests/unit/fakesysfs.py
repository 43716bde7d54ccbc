"""A fake host for the harness/host unit tests: a tree with the real sysfs/procfs layout, and a
small fake kernel that reacts to writes the way Linux does.

Layout, as on a real host::

    sys/devices/pci0000:00/0000:00:1c.0/0000:05:00.0/      the device (behind its root port)
    sys/bus/pci/devices/0000:05:00.0 -> ../../../devices/pci0000:00/0000:00:1c.0/0000:05:00.0
    <device>/driver -> ../../../../bus/pci/drivers/ixgbe
    sys/bus/pci/drivers/ixgbe/0000:05:00.0 -> <device>
    <device>/iommu_group -> ../../../../kernel/iommu_groups/12
    sys/kernel/iommu_groups/12/devices/0000:05:00.0 -> <device>

Files in a temp dir do not react to writes; ``FakeHost.kernel`` is the ``on_write`` hook of the
:class:`Sysfs` it hands out, and updates the links like Linux: ``driver_override``, ``unbind``,
``bind``, ``drivers_probe``, ``new_id``, ``remove_id``, and a PF's ``sriov_numvfs`` (which makes
or removes its VFs: :meth:`FakeHost.sriov_capable`); and a USB driver's ``bind``. ``fail``
makes a write fail with an errno; ``kill_at`` raises :class:`Killed` (a run killed by SIGKILL:
no cleanup runs). Each PCI device has its ``modalias``, and the running kernel's
``lib/modules/$(uname -r)/modules.alias`` lists each driver's ``ids`` (not its ``new_id``'s).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.host.sysfs import Sysfs

PCI_IDS = """\
# a few lines of the real pci.ids
8086  Intel Corporation
\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection
\t\t8086 000c  Ethernet Server Adapter X520-2
\t1533  I210 Gigabit Network Connection
\t15bb  Ethernet Connection (7) I219-LM
\ta352  Cannon Lake PCH SATA AHCI Controller
\ta36d  Cannon Lake PCH USB 3.1 xHCI Host Controller
1b21  ASMedia Technology Inc.
\t0612  ASM1062 Serial ATA Controller
1912  Renesas Technology Corp.
\t0015  uPD720202 USB 3.0 Host Controller
C 02  Network controller
\t00  Ethernet controller
"""

#: `qemu-system-x86_64 -device help` of QEMU 7.2 (Debian 12), the lines that matter.
DEVICE_HELP_QEMU72 = """\
Controller/Bridge/Hub devices:
name "pcie-root-port", bus PCI, desc "PCI Express Root Port"
name "usb-host", bus usb-bus
name "usb-hub", bus usb-bus
name "vfio-pci-igd-lpc-bridge", bus PCI, desc "VFIO dummy ISA/LPC bridge for IGD assignment"

USB devices:
name "qemu-xhci", bus PCI
name "usb-ehci", bus PCI

Misc devices:
name "vfio-pci", bus PCI, desc "VFIO-based PCI device assignment"
name "vfio-pci-nohotplug", bus PCI, desc "VFIO-based PCI device assignment"
"""


#: The major number the kernel gave vfio's group devices (dynamic; 243 is a common one).
VFIO_MAJOR = 243


class Killed(BaseException):
    """The run was killed at this write (not an Exception: nothing catches it)."""


class FakeHost:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.writes: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], int] = {}
        self.kill_at: tuple[str, str] | None = None
        self.on_any_write = None
        self.ids: dict[str, set[str]] = {}      # driver -> "vvvv:dddd" it matches
        self.dynids: dict[str, set[str]] = {}   # driver -> ids added by new_id
        self.usb_controllers: dict[int, str] = {}
        self.sriov: dict[str, dict] = {}        # PF -> its SR-IOV capability and VFs
        for d in ("bus/pci/devices", "bus/pci/drivers", "devices/pci0000:00",
                  "kernel/iommu_groups", "bus/usb/devices", "bus/usb/drivers", "class/net",
                  "class/block", "devices/virtual/net", "devices/virtual/block", "class/iommu",
                  "module"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        (self.sys / "bus/pci/drivers_probe").write_text("")
        (self.root / "proc/net").mkdir(parents=True)
        # What every Linux host has, read as evidence (unreadable: nothing is proven idle).
        self.proc("self/mountinfo", "")
        self.proc("swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
        self.proc("consoles", "tty0                 -WU (EC p  )    4:7\n")
        self.proc("sys/kernel/osrelease", "6.1.0-18-amd64\n")  # (Debian 12's: no tcx)
        self.host_namespaces()
        self.add_driver("vfio-pci")

    # -- building ----------------------------------------------------------------------------

    def sysfs(self) -> Sysfs:
        return Sysfs(self.root, on_write=self.kernel)

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link)

    def add_driver(self, name: str, ids=()) -> None:
        d = self.sys / "bus/pci/drivers" / name
        if not d.exists():
            d.mkdir(parents=True)
            for attr in ("bind", "unbind", "new_id", "remove_id"):
                (d / attr).write_text("")
        self.ids.setdefault(name, set()).update(ids)
        self.dynids.setdefault(name, set())
        self._modules_alias()

    def _modules_alias(self) -> None:
        """The running kernel's ``modules.alias`` as depmod writes it from each driver's id
        table (``ids``; ``new_id``'s are in none), its module named as the driver, and an
        empty ``modules.builtin.alias`` (every driver here is a module)."""
        lines = [f"alias pci:v0000{ids[:4].upper()}d0000{ids[5:].upper()}sv*sd*bc*sc*i* "
                 f"{driver.replace('-', '_')}\n"
                 for driver, table in sorted(self.ids.items()) for ids in sorted(table)]
        self.file(f"lib/modules/{os.uname().release}/modules.alias",
                  "# Aliases extracted from modules themselves.\n" + "".join(lines))
        self.file(f"lib/modules/{os.uname().release}/modules.builtin.alias", "")

    def remove_driver(self, name: str) -> None:
        d = self.sys / "bus/pci/drivers" / name
        for p in d.iterdir():
            p.unlink()
        d.rmdir()

    def dev_dir(self, bdf: str) -> Path:
        return Path(os.path.realpath(self.sys / "bus/pci/devices" / bdf))

    def add_pci(self, bdf: str, ids: str, cls: int, driver: str | None = None,
                group: int | None = None, parent: str | None = None,
                override_file: bool = True) -> Path:
        base = self.dev_dir(parent) if parent else self.sys / "devices/pci0000:00"
        d = base / bdf
        d.mkdir(parents=True)
        vendor, device = ids.split(":")
        (d / "vendor").write_text(f"0x{vendor}\n")
        (d / "device").write_text(f"0x{device}\n")
        (d / "class").write_text(f"0x{cls:06x}\n")
        header = 1 if cls >> 8 in (0x0604, 0x0609) else 0
        (d / "config").write_bytes(bytes([*bytes.fromhex(vendor)[::-1], *bytes.fromhex(device)[::-1]])
                                   + bytes(10) + bytes([header]) + bytes(49))
        (d / "modalias").write_text(f"pci:v0000{vendor.upper()}d0000{device.upper()}sv00000000"
                                    f"sd00000000bc{cls >> 16:02X}sc{cls >> 8 & 0xff:02X}"
                                    f"i{cls & 0xff:02X}\n")
        if override_file:
            (d / "driver_override").write_text("(null)\n")
        self._link(self.sys / "bus/pci/devices" / bdf, d)
        if driver:
            self.add_driver(driver, [ids])
            self._bind(bdf, driver)
        if group is not None:
            g = self.sys / "kernel/iommu_groups" / str(group)
            (g / "devices").mkdir(parents=True, exist_ok=True)
            self._link(d / "iommu_group", g)
            self._link(g / "devices" / bdf, d)
        return d

    def sriov_capable(self, pf: str, totalvfs: int, *, vf_ids: str = "8086:10ca",
                      vf_driver: str | None = "igbvf", first_group: int = 100) -> None:
        """Give the PCI function ``pf`` the SR-IOV capability, as its driver would: VF ``i``
        appears at slot 0x10 + i / 8 of the PF's bus, in IOMMU group ``first_group + i``
        (isolated, as 82576 VFs are), and binds to ``vf_driver`` if it is loaded."""
        d = self.dev_dir(pf)
        (d / "sriov_totalvfs").write_text(f"{totalvfs}\n")
        (d / "sriov_numvfs").write_text("0\n")
        (d / "sriov_drivers_autoprobe").write_text("1\n")
        self.sriov[pf] = {"total": totalvfs, "numvfs": 0, "vf_ids": vf_ids,
                          "vf_driver": vf_driver, "first_group": first_group}
        if vf_driver:
            self.add_driver(vf_driver, [vf_ids])

    def vf_address(self, pf: str, index: int) -> str:
        return f"{pf[:8]}{0x10 + index // 8:02x}.{index % 8}"

    def _set_numvfs(self, path: Path, pf: str, value: str) -> None:
        cap = self.sriov[pf]

        def refuse(err: int) -> None:
            path.write_text(f"{cap['numvfs']}\n")  # the kernel keeps the old count
            raise OSError(err, os.strerror(err))

        try:
            n = int(value)
        except ValueError:
            refuse(errno.EINVAL)
        if n > cap["total"]:
            refuse(errno.ERANGE)
        if n and cap["numvfs"]:
            refuse(errno.EBUSY)
        pf_dir = self.dev_dir(pf)
        if n == 0:
            for i in range(cap["numvfs"]):
                vf = self.vf_address(pf, i)
                if self.driver_of(vf):
                    self._unbind(vf)
                vf_dir = self.dev_dir(vf)
                group = Path(os.path.realpath(vf_dir / "iommu_group"))
                (group / "devices" / vf).unlink()
                (self.sys / "bus/pci/devices" / vf).unlink()
                (pf_dir / f"virtfn{i}").unlink()
                shutil.rmtree(vf_dir)
        for i in range(n):
            vf = self.vf_address(pf, i)
            above = pf_dir.parent.name  # VFs sit beside their PF (behind the same port)
            vf_dir = self.add_pci(vf, cap["vf_ids"], 0x020000, group=cap["first_group"] + i,
                                  parent=above if above.count(":") == 2 else None)
            self._link(vf_dir / "physfn", pf_dir)
            self._link(pf_dir / f"virtfn{i}", vf_dir)
            # (the kernel reads sriov_drivers_autoprobe as each VF is added: 0, no driver)
            switch = pf_dir / "sriov_drivers_autoprobe"  # (none before Linux 4.12: probed)
            if not switch.exists() or switch.read_text().strip() != "0":
                self._probe(vf)
        cap["numvfs"] = n
        path.write_text(f"{n}\n")

    def add_net(self, ifname: str, bdf: str | None = None, lower=()) -> None:
        base = self.dev_dir(bdf) if bdf else self.sys / "devices/virtual"
        d = base / "net" / ifname
        d.mkdir(parents=True)
        self._link(self.sys / "class/net" / ifname, d)
        if bdf:  # a port's device (a virtual interface has none)
            self._link(d / "device", self.dev_dir(bdf))
        for low in lower:
            self._link(d / f"lower_{low}", Path(os.path.realpath(self.sys / "class/net" / low)))
        listed = self.root / "ip/link.json"
        if listed.exists():  # `ip link` shows it too (down: no address, no route)
            links = json.loads(listed.read_text())
            listed.write_text(json.dumps(links + [link(len(links) + 1, ifname, bdf)]))

    def add_disk(self, name: str, under: Path, partitions=(), sectors: int = 321672960,
                 majmin: str | None = None) -> Path:
        d = under / "block" / name
        d.mkdir(parents=True)
        (d / "size").write_text(f"{sectors}\n")
        self._link(self.sys / "class/block" / name, d)
        if majmin:
            self._link(self.sys / "dev/block" / majmin, d)
        for part in partitions:
            (d / part).mkdir()
            (d / part / "partition").write_text("1\n")
            self._link(self.sys / "class/block" / part, d / part)
        return d

    def sata_port(self, bdf: str, port: int = 0) -> Path:
        return self.dev_dir(bdf) / f"ata{port + 1}/host{port}/target{port}:0:0/{port}:0:0:0"

    def add_dm(self, name: str, dm_name: str, slaves) -> None:
        d = self.sys / "devices/virtual/block" / name
        (d / "dm").mkdir(parents=True)
        (d / "dm/name").write_text(dm_name + "\n")
        (d / "slaves").mkdir()
        self._link(self.sys / "class/block" / name, d)
        for s in slaves:
            slave = Path(os.path.realpath(self.sys / "class/block" / s))
            self._link(d / "slaves" / s, slave)
            (slave / "holders").mkdir(exist_ok=True)
            self._link(slave / "holders" / name, d)

    def add_usb_bus(self, busnum: int, controller: str) -> None:
        self.usb_controllers[busnum] = controller
        self._usb_dir(f"usb{busnum}", self.dev_dir(controller) / f"usb{busnum}", busnum, 1,
                      "1d6b:0003", "xHCI Host Controller", "Linux", "09")

    def add_usb(self, name: str, devnum: int, ids: str, product: str | None = None,
                manufacturer: str | None = None, dev_class: str = "00",
                iface_driver: str | None = "usbhid") -> Path:
        busnum = int(name.split("-")[0])
        parent = self.dev_dir(self.usb_controllers[busnum]) / f"usb{busnum}"
        d = self._usb_dir(name, parent / name, busnum, devnum, ids, product, manufacturer,
                          dev_class)
        iface = d / f"{name}:1.0"
        iface.mkdir()
        self._link(self.sys / "bus/usb/devices" / iface.name, iface)
        if iface_driver:
            (self.sys / "bus/usb/drivers" / iface_driver).mkdir(exist_ok=True)
            self._link(iface / "driver", self.sys / "bus/usb/drivers" / iface_driver)
        return iface

    def _usb_dir(self, name, d: Path, busnum, devnum, ids, product, manufacturer, dev_class):
        d.mkdir(parents=True)
        vendor, prod = ids.split(":")
        files = {"busnum": busnum, "devnum": devnum, "idVendor": vendor, "idProduct": prod,
                 "bDeviceClass": dev_class, "product": product, "manufacturer": manufacturer}
        for k, v in files.items():
            if v is not None:
                (d / k).write_text(f"{v}\n")
        # every USB device, root hubs included, is a node: /dev/bus/usb/BBB/DDD, major 189
        (d / "dev").write_text(f"189:{(busnum - 1) * 128 + devnum - 1}\n")
        (d / "uevent").write_text(f"DEVNAME=bus/usb/{busnum:03d}/{devnum:03d}\n")
        self._link(self.sys / "bus/usb/devices" / name, d)
        return d

    def network(self, namespace: str = "", *, links, addrs=None, routes=(), routes6=(),
                ss: str = "", packet: str = "sk RefCnt Type Proto Iface R Rmem User Inode\n"
                ) -> None:
        """What `ip -j -d link`, `ip -j addr`, `ip -j route show table all` (and -6), `ss` and
        /proc/net/packet print in ``namespace`` ("": the harness's own; a name is also added
        to `ip netns list`)."""
        where = f"ip/netns/{namespace}" if namespace else "ip"
        addrs = addrs or {}
        data = {"link": links, "route": list(routes), "route6": list(routes6),
                "addr": [{"ifindex": li["ifindex"], "ifname": li["ifname"],
                          "addr_info": [{"local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
                                        for a in addrs.get(li["ifname"], [])]} for li in links]}
        for what, value in data.items():
            self.file(f"{where}/{what}.json", json.dumps(value))
        self.file(f"{where}/ss.txt", ss)
        self.file(f"{where}/tc-qdisc.json", "[]")  # (`tc -j qdisc show`: nothing configured)
        for li in links:  # (`tc class show dev X`: no class)
            self.file(f"{where}/tc-class-{li['ifname']}.txt", "")
        for li in links:  # (`bridge -j fdb|mdb show dev VXLAN`: no entry `via` a port)
            if (li.get("linkinfo") or {}).get("info_kind") == "vxlan":
                self.file(f"{where}/bridge-fdb-{li['ifname']}.json", "[]")
                self.file(f"{where}/bridge-mdb-{li['ifname']}.json",
                          '[{"mdb": [], "router": {}}]')
        if namespace:
            self.file(f"{where}/packet.txt", packet)
            listed = self.root / "ip/netns.json"
            names = json.loads((listed.read_text() if listed.exists() else "") or "[]")
            self.file("ip/netns.json", json.dumps(names + [{"name": namespace}]))
        else:
            self.proc("net/packet", packet)
            if not (self.root / "ip/netns.json").exists():
                self.file("ip/netns.json", "")
            if not (self.root / "ip/netns-list-id.json").exists():  # (no peer nsid)
                self.file("ip/netns-list-id.json", "[]")

    def host_namespaces(self, **mine: str) -> None:
        """The harness runs in the host's PID and mount namespaces: /proc/self/ns/{pid,mnt}
        are PID 1's, and PID 1's PID namespace is the initial one (the proof
        ``namespace_problem`` wants). ``mine``: this process's own instead (``pid="pid:[N]"``)."""
        host = {"net": "net:[4026531840]", "pid": "pid:[4026531836]", "mnt": "mnt:[4026531841]"}
        for who, links in (("1", host), ("self", {**host, **mine})):
            for kind, target in links.items():
                p = self.root / "proc" / who / "ns" / kind
                p.parent.mkdir(parents=True, exist_ok=True)
                if p.is_symlink():
                    p.unlink()
                os.symlink(target, p)
        if not (self.root / "proc/1/root").is_symlink():  # (PID 1's root is this one's: /)
            os.symlink(self.root, self.root / "proc/1/root")

    def proc(self, name: str, text: str) -> None:
        """``name`` under proc/; ``mounts`` (the /proc/mounts format, easier to write) is
        written as self/mountinfo too, which the harness reads (with no MAJ:MIN: 0:0)."""
        p = self.root / "proc" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if name == "mounts":
            self.proc("self/mountinfo", "".join(
                f"{n} 1 0:0 / {f[1]} {f[3]} - {f[2]} {f[0]} {f[3]}\n"
                for n, f in enumerate((line.split() for line in text.splitlines()), start=20)
                if len(f) >= 4))
            if any(f[2] in ("nfs", "nfs4") for f in (line.split() for line in text.splitlines())
                   if len(f) >= 4):
                self.nfs_loaded()

    def nfs_loaded(self) -> None:
        """An NFS mount's kernel: ``nfs`` loaded, and the harness's namespace's NFS volume list
        (/proc/fs/nfsfs/volumes), its header only unless a test wrote one: a fake mount's
        superblock is ``0:0``, listed nowhere, which the harness leaves to ``clientaddr``."""
        (self.sys / "module/nfs").mkdir(parents=True, exist_ok=True)
        volumes = self.root / "proc/fs/nfsfs/volumes"
        if not volumes.exists():
            self.proc("fs/nfsfs/volumes", "NV SERVER   PORT DEV          FSID"
                      "                              FSC\n")

    def file(self, rel: str, text: str | bytes = "") -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        return p

    # -- state -------------------------------------------------------------------------------

    def driver_of(self, bdf: str) -> str | None:
        link = self.dev_dir(bdf) / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def override_of(self, bdf: str) -> str | None:
        p = self.dev_dir(bdf) / "driver_override"
        if not p.exists():
            return None
        text = p.read_text().strip()
        return None if text == "(null)" else text

    def snapshot(self) -> dict[str, tuple]:
        """Every file's bytes and every link's target under root."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                rel = os.path.relpath(p, self.root)
                if os.path.islink(p):
                    out[rel] = ("link", os.readlink(p))
                elif os.path.isfile(p):
                    out[rel] = ("file", Path(p).read_bytes())
                else:
                    out[rel] = ("dir",)
        return out

    # -- the kernel --------------------------------------------------------------------------

    def _bind(self, bdf: str, driver: str) -> None:
        d = self.dev_dir(bdf)
        self._link(d / "driver", self.sys / "bus/pci/drivers" / driver)
        self._link(self.sys / "bus/pci/drivers" / driver / bdf, d)
        if driver == "vfio-pci":
            group = os.path.basename(os.readlink(d / "iommu_group"))
            self.file(f"dev/vfio/{group}")
            self.file(f"sys/class/vfio/{group}/dev", f"{VFIO_MAJOR}:{group}\n")

    def _unbind(self, bdf: str) -> None:
        driver = self.driver_of(bdf)
        (self.dev_dir(bdf) / "driver").unlink()
        (self.sys / "bus/pci/drivers" / driver / bdf).unlink()

    def _ids_of(self, bdf: str) -> str:
        d = self.dev_dir(bdf)
        return f"{(d / 'vendor').read_text().strip()[2:]}:{(d / 'device').read_text().strip()[2:]}"

    def _matches(self, driver: str, bdf: str) -> bool:
        override = self.override_of(bdf)
        if override is not None:
            return override == driver
        return self._ids_of(bdf) in self.ids[driver] | self.dynids[driver]

    def _probe(self, bdf: str) -> None:
        if self.driver_of(bdf):
            return
        for driver in sorted(self.ids):
            if (self.sys / "bus/pci/drivers" / driver).is_dir() and self._matches(driver, bdf):
                self._bind(bdf, driver)
                return

    def kernel(self, path: Path, value: str) -> None:
        rel = str(path.relative_to(self.root))
        v = value.strip()
        self.writes.append((rel, v))
        if self.on_any_write:
            self.on_any_write(rel, v)
        if self.kill_at and rel.endswith(self.kill_at[0]) and v == self.kill_at[1]:
            raise Killed(rel)
        for (suffix, val), err in self.fail.items():
            if rel.endswith(suffix) and v == val:
                raise OSError(err, os.strerror(err))
        parts = Path(rel).relative_to("sys").parts
        if parts == ("bus", "pci", "drivers_probe"):
            if not (self.sys / "bus/pci/devices" / v).exists():
                raise OSError(errno.ENODEV, "No such device")
            self._probe(v)
        elif parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5:
            driver, attr = parts[3], parts[4]
            if attr == "unbind":
                if self.driver_of(v) != driver:
                    raise OSError(errno.ENODEV, "No such device")
                self._unbind(v)
            elif attr == "bind":
                if not (self.sys / "bus/pci/devices" / v).exists() or not self._matches(driver, v):
                    raise OSError(errno.ENODEV, "No such device")
                if self.driver_of(v):
                    raise OSError(errno.EBUSY, "Device or resource busy")
                self._bind(v, driver)
            elif attr == "new_id":
                self.dynids[driver].add(v.replace(" ", ":"))
                for bdf in sorted(p.name for p in (self.sys / "bus/pci/devices").iterdir()):
                    if not self.driver_of(bdf) and self._matches(driver, bdf):
                        self._bind(bdf, driver)
            elif attr == "remove_id":
                ids = v.replace(" ", ":")
                if ids not in self.dynids[driver]:
                    raise OSError(errno.ENODEV, "No such device")
                self.dynids[driver].discard(ids)
        elif parts[:3] == ("bus", "pci", "devices") and parts[-1] == "driver_override":
            path.write_text((v or "(null)") + "\n")
        elif parts[:3] == ("bus", "pci", "devices") and parts[-1] == "sriov_numvfs":
            self._set_numvfs(path, parts[3], v)
        elif parts[:3] == ("bus", "usb", "drivers") and len(parts) == 5 and parts[4] == "bind":
            self._usb_bind(v, parts[3])

    def _usb_bind(self, iface: str, driver: str) -> None:
        """A USB interface bound to ``driver`` by name (``drivers_probe`` binds nothing here:
        the fake has no USB id tables)."""
        where = Path(os.path.realpath(self.sys / "bus/usb/devices" / iface))
        if not where.exists():
            raise OSError(errno.ENODEV, "No such device")
        if (where / "driver").is_symlink():
            raise OSError(errno.EBUSY, "Device or resource busy")
        self._link(where / "driver", self.sys / "bus/usb/drivers" / driver)


def link(index: int, name: str, bdf: str | None = None, *, up: bool = False, **more) -> dict:
    """One interface as `ip -j -d link show` prints it (``parentdev``: its PCI function)."""
    out = {"ifindex": index, "ifname": name, "link_type": "loopback" if name == "lo" else "ether",
           "flags": ["BROADCAST", "MULTICAST"] + (["UP", "LOWER_UP"] if up else []),
           "operstate": "UP" if up else "DOWN"}
    if bdf:
        out.update(parentbus="pci", parentdev=bdf)
    out.update(more)
    return out


def _tmpfs_dir() -> Path | None:
    """A fresh dir on tmpfs if there is one: a fake host is ~400 files, 10 ms to build there
    and ~300 ms on a busy disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="hh-fakehost-", dir=shm))
    return None


@pytest.fixture
def fake_root(request):
    root = _tmpfs_dir()
    yield root or request.getfixturevalue("tmp_path")
    if root:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_readonly(tmp_path_factory) -> "FakeHost":
    """One :func:`lab_host` for the tests of a module that only read it."""
    root = _tmpfs_dir()
    yield lab_host(root or tmp_path_factory.mktemp("lab"))
    if root:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab(fake_root, monkeypatch) -> "FakeHost":
    """:func:`lab_host` in a fresh root. The tests must not see the $SSH_CONNECTION of whoever
    runs them."""
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    return lab_host(fake_root)


def lab_host(root: Path) -> FakeHost:
    """A typical lab host (Intel, VT-d on):

    ======== ================================ ========== ===== ==============================
    BDF      device                           driver     group role / use
    ======== ================================ ========== ===== ==============================
    00:00.0  host bridge                      -          0
    00:14.0  xHCI (USB bus 3)                 xhci_hcd   3     mouse 3-3, keyboard 3-4, stick
                                                               3-5 mounted on /mnt/usb
    00:17.0  SATA AHCI                        ahci       4     sda: / and swap
    00:1c.0  root port                        pcieport   7
    05:00.0  82599 port 0 (enp5s0f0)          ixgbe      12    free
    05:00.1  82599 port 1 (enp5s0f1)          ixgbe      12    free (10.0.5.0/24)
    00:1c.2  root port                        pcieport   8
    02:00.0  I210 (enp2s0)                    igb        11    default route, SSH
    00:1c.4  root port                        pcieport   9
    06:00.0  ASM1062 SATA                     ahci       13    sdb, not mounted
    00:1d.0  root port                        pcieport   14    (shares the group: no ACS)
    07:00.0  uPD720202 xHCI (USB bus 4)       xhci_hcd   14    free
    00:1f.0  LPC/ISA bridge                   lpc_ich    15
    00:1f.3  SMBus                            i801_smbus 15
    00:1f.6  I219 (eno1)                      e1000e     15    unused, shares the ISA bridge's
    ======== ================================ ========== ===== ==============================
    """
    h = FakeHost(root)
    h.add_pci("0000:00:00.0", "8086:3e30", 0x060000, group=0)
    h.add_pci("0000:00:14.0", "8086:a36d", 0x0c0330, "xhci_hcd", 3)
    h.add_pci("0000:00:17.0", "8086:a352", 0x010601, "ahci", 4)
    h.add_pci("0000:00:1c.0", "8086:a338", 0x060400, "pcieport", 7)
    h.add_pci("0000:05:00.0", "8086:10fb", 0x020000, "ixgbe", 12, parent="0000:00:1c.0")
    h.add_pci("0000:05:00.1", "8086:10fb", 0x020000, "ixgbe", 12, parent="0000:00:1c.0")
    h.add_pci("0000:00:1c.2", "8086:a33a", 0x060400, "pcieport", 8)
    h.add_pci("0000:02:00.0", "8086:1533", 0x020000, "igb", 11, parent="0000:00:1c.2")
    h.add_pci("0000:00:1c.4", "8086:a33c", 0x060400, "pcieport", 9)
    h.add_pci("0000:06:00.0", "1b21:0612", 0x010601, "ahci", 13, parent="0000:00:1c.4")
    h.add_pci("0000:00:1d.0", "8086:a330", 0x060400, "pcieport", 14)
    h.add_pci("0000:07:00.0", "1912:0015", 0x0c0330, "xhci_hcd", 14, parent="0000:00:1d.0")
    h.add_pci("0000:00:1f.0", "8086:a306", 0x060100, "lpc_ich", 15)
    h.add_pci("0000:00:1f.3", "8086:a323", 0x0c0500, "i801_smbus", 15)
    h.add_pci("0000:00:1f.6", "8086:15bb", 0x020000, "e1000e", 15)

    h.add_net("lo")
    h.add_net("enp5s0f0", "0000:05:00.0")
    h.add_net("enp5s0f1", "0000:05:00.1")
    h.add_net("enp2s0", "0000:02:00.0")
    h.add_net("eno1", "0000:00:1f.6")
    h.add_disk("sda", h.sata_port("0000:00:17.0"), ("sda1", "sda2", "sda3"), majmin="8:0")
    h.add_disk("sdb", h.sata_port("0000:06:00.0"), ("sdb1",), sectors=321672960)

    h.add_usb_bus(3, "0000:00:14.0")
    h.add_usb_bus(4, "0000:07:00.0")
    h.add_usb("3-3", 3, "03f0:8607", "Optical Mobile Mouse", "HP")
    h.add_usb("3-4", 4, "046d:c31c", "USB Keyboard", "Logitech")
    stick = h.add_usb("3-5", 5, "0781:5581", "Ultra", "SanDisk", iface_driver="usb-storage")
    h.add_disk("sdc", stick / "host6/target6:0:0/6:0:0:0", ("sdc1",), sectors=60063744)

    h.proc("mounts", "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
                     "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
                     "/dev/sda2 / ext4 rw,relatime,errors=remount-ro 0 0\n"
                     "tmpfs /run tmpfs rw,nosuid,nodev,size=3264524k,mode=755 0 0\n"
                     "/dev/sdc1 /mnt/usb\\040stick vfat rw,relatime 0 0\n")
    h.proc("swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                    "/dev/sda3                               partition\t8388604\t\t0\t\t-2\n")
    h.network(links=[link(1, "lo", up=True), link(2, "enp2s0", "0000:02:00.0", up=True),
                     link(3, "enp5s0f0", "0000:05:00.0"), link(4, "enp5s0f1", "0000:05:00.1"),
                     link(5, "eno1", "0000:00:1f.6")],
              addrs={"lo": ["127.0.0.1/8"], "enp2s0": ["192.168.1.10/24", "fe80::1:10/64"]},
              routes=[{"dst": "default", "gateway": "192.168.1.1", "dev": "enp2s0", "flags": []},
                      {"dst": "192.168.1.0/24", "dev": "enp2s0", "scope": "link", "flags": []},
                      {"type": "local", "dst": "127.0.0.1", "dev": "lo", "table": "local",
                       "flags": []}],
              # sshd on 192.168.1.10:22 with a client at 192.168.1.50:50022
              ss="tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\n"
                 "tcp ESTAB 0 0 192.168.1.10:22 192.168.1.50:50022\n")
    h.proc("cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\n"
                      "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic vmx ssse3 sse4_2\n")
    h.proc("cmdline", "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=UUID=1234 ro quiet "
                      "intel_iommu=on iommu=pt\n")
    h.proc("sys/kernel/osrelease", "6.1.0-18-amd64\n")
    h.file("sys/class/iommu/dmar0/intel-iommu/cap", "d2008c40660462\n")
    h.file("sys/class/iommu/dmar0/intel-iommu/ecap", "f050da\n")  # bit 3: interrupt remapping
    (h.sys / "module/kvm_intel").mkdir()
    h.file("dev/kvm")
    h.file("usr/share/misc/pci.ids", PCI_IDS)
    h.file("usr/share/seabios/bios-256k.bin", b"\0")
    return h


def bind_outcome(lab: "FakeHost", journal: Path, bdf: str, allowed: set) -> tuple[str, str | None]:
    """``harness bind`` of ``bdf`` on the fake ``lab`` host, with the inventory's ``allowed``:
    (the refusal, or "" when it was taken; the driver it is on after the bind). The binder's
    give-back at its close may refuse (a device taken in use is not given back while its
    user holds it): the outcome is the bind's."""
    from harness.core.errors import HostDeviceError
    from harness.host.binding import VfioBinder
    binder = VfioBinder(lab.sysfs(), journal=journal)
    try:
        binder.bind(bdf, allowed)
        refused = ""
    except HostDeviceError as e:
        refused = e.message
    driver = lab.driver_of(bdf)
    try:
        binder.close()
    except HostDeviceError:
        pass
    return refused, driver


def assert_kept(lab: "FakeHost", journal: Path, bdf: str, allowed: set, driver: str,
                named: str, calls: list, on_call: int, what: str) -> None:
    """:func:`bind_outcome` refused the bind of ``bdf`` naming ``named`` and left it on its
    ``driver``, after the network read ``on_call`` (``calls``: those made) in which ``what``
    began, as the review tests of the last reads' window put it."""
    refused, now = bind_outcome(lab, journal, bdf, allowed)
    assert len(calls) >= on_call
    assert named in refused and now == driver, (
        f"{bdf} was moved to {now} while {what}, during network read {on_call} of the bind "
        f"({len(calls)} in all): " + (f"refused: {refused}" if refused else "not refused"))
