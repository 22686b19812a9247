"""Names → files: filters, root confinement, local files and a shared remote cache.

The TFTP server asks :meth:`FileStore.open` for the name a client sent and gets a
:class:`~massboot.sources.Source` it reads by offset; the DHCP server asks
:meth:`FileStore.size` for option 13 (RFC 2132 section 3.15).

* :mod:`~massboot.files.names`: client names → targets (confinement, ``[filters]``).
* :mod:`~massboot.files.local`: local files, read without stalling the hub.
* :mod:`~massboot.files.cache`: the cache directory's LRU index and reader counts.
* :mod:`~massboot.files.download`: one upstream download, streamed into the cache.
* :mod:`~massboot.files.mirror`: single-flight downloads of remote files into the cache.
* :mod:`~massboot.files.store`: :class:`FileStore`, the facade over them.
"""

from massboot.files.download import CHUNK
from massboot.files.store import FileStore
from massboot.sources import ClientInfo, FileError, FileReason, Source

__all__ = ["CHUNK", "ClientInfo", "FileError", "FileReason", "FileStore", "Source"]
