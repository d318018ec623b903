"""The web inspector (``orchestra ui``): a local page over the same session store the command
line writes. See docs/ui.md."""
