"""artnote's web layer: `artnote review` (a local web page to review annotations) and
`artnote report` (one self-contained HTML file with charts). It depends on artnote,
never the reverse: artnote finds its commands through the `artnote.commands` entry point."""
