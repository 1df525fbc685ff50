"""The trace pages (``/ui``): the recent requests, each one's K candidates and why the winner
won, and ``bestofk stats`` in the browser. ``routes`` serves them, ``source`` reads the records
behind them, ``listing`` (the request list and the stats chart), ``trace`` (a request's page),
``waterfall`` (its timeline) and ``diff`` (two of its candidates) turn records into what a page
shows, ``templates/`` renders it."""
