from .io import atomic_write, atomic_write_bytes, atomic_write_json  # noqa: F401
