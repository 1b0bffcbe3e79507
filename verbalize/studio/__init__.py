"""The template studio: a local web page where analysts edit templates and see, while they type, the
problems, tokens and scores of their edits (``verbalize studio``). Interfaces layer, beside ``serve``: it may
use the service's stack, never the reverse."""
