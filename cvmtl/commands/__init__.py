"""The commands behind ``cvmtl <command>`` and ``python tools/<command>.py``: one module each with
``main(argv) -> exit status``, so that a regular (non-editable) install carries them."""
