"""What is made of request records after the fact: ``export`` turns them into DPO, RSFT and KTO
datasets; ``stats`` says how much pass@K beats pass@1, i.e. whether training on these verdicts
would pay. The records themselves (format, reader, recorder) are the server's:
:mod:`bestofk.service.records`."""
