"""The lab console: a web page on the lab for people (``mlops_lab.console.app``)."""
