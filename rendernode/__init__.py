"""rendernode: a Blender render node and render farm on aiohttp."""

__version__ = "0.1.0"
