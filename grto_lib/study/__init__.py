"""The study: the paper's claims in miniature (``results``, ``make results``) and the figures and widgets the
notebooks draw (``plots``)."""
