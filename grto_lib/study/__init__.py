"""The study: the paper's claims in miniature (``results``, ``make results``), the rows before RL its tables start
with (``reference``), and the figures and widgets the notebooks draw (``plots``)."""
