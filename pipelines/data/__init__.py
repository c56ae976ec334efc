"""Raw data: acquisition (download.py, sources.py), decoding (readers.py) and the prepared
format (prepare.py, backbone.py). See docs/outputs.md for the files these produce."""
from pipelines.data.download import DataError, DownloadError, fetch
from pipelines.data.prepare import prepare
from pipelines.data.sources import CHECKSUMS, acquire

__all__ = ["CHECKSUMS", "DataError", "DownloadError", "acquire", "fetch", "prepare"]
