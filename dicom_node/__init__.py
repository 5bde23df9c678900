"""dicom-node: receive, keep, route, process and send DICOM. Not a medical device."""

__version__ = "0.1.0"
