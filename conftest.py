# The harness is an installed pytest plugin (entry point `hotplug` -> harness.plugin); this file
# only makes a plain checkout work too, before `pip install -e .`.
import importlib.util

if importlib.util.find_spec("harness") is not None:
    import importlib.metadata

    _registered = any(ep.name == "hotplug" for ep in importlib.metadata.entry_points(group="pytest11"))
    if not _registered:
        pytest_plugins = ["harness.plugin"]
