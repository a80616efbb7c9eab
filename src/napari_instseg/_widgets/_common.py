"""Small pieces shared by the dock widgets."""

from magicgui.widgets import Label


def wrapping_label(label: str = "", value: str = "") -> Label:
    """A Label whose long messages wrap instead of widening the dock."""
    widget = Label(label=label, value=value)
    widget.native.setWordWrap(True)
    return widget
