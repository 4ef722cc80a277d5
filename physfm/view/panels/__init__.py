"""The viewer's panels, one module each: its controls and graphs (``layout``) and the callbacks that
fill them (a class whose methods are marked with :func:`physfm.view.panels.site.callback`)."""
