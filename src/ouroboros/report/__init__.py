"""Reports: data behind each figure (data.py, stats.py), figures (figures.py), the page (html.py)."""
