"""Raw data: acquisition (download.py, sources.py), decoding (readers.py) and the prepared
format (prepare.py, backbone.py). See docs/outputs.md for the files these produce.

Nothing is imported here: importing one module of the package (the stages' error handling imports
download.py's DataError) must not run the others, or every stage would depend on all of them."""
