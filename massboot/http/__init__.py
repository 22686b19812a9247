"""pybootd's ``-H`` file server: HTTP/1.1 GET and HEAD over the TFTP server's file store.

* :mod:`~massboot.http.protocol`: request heads, ranges, conditionals, response heads (sans I/O).
* :mod:`~massboot.http.server`: the gevent server: a bounded pool of connections, keep-alive,
  timeouts, ``os.sendfile``.

"""
