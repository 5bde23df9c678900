"""The small shared core of dicom-node: configuration schema, UIDs and the SOP class / transfer syntax table.

Every other package builds on it and it imports none of them (docs/ARCHITECTURE.md, enforced by import-linter in
``make lint``): ``dicom_node`` (network edges, queue, configuration loader, workers, service), ``inference``
(processing) and ``sr_writer`` (results) all share these types, so a configuration object, a UID or a scanner match
means the same thing in every process and layer.
"""
