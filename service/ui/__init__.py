"""The trace pages (``/ui``): the recent requests, each one's K candidates and why the winner
won, and ``bestofk stats`` in the browser. ``routes`` serves them, ``source`` reads the records
behind them, ``views`` turns a record into what a page shows, ``templates/`` renders it."""
