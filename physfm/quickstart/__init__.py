"""The quickstart: the whole pipeline on built-in data, on a CPU, with a report (``physfm quickstart``)."""
