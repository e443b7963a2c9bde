"""The spend console at ``/console``: pages a browser shows, served by the gateway itself.

``sessions`` signs and checks the session cookie and CSRF tokens, ``charts`` draws SVG,
``pages`` renders HTML, ``routes`` is the aiohttp application that ties them to the ledger.
"""
