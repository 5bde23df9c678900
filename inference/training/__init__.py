"""Training, export and evaluation of the reference anatomical-region detector (HEAD, SPINE, CHEST, ABDOMEN, PELVIS).

Modules: ``metrics`` (COCO AP, mean IoU, RSNA metric in numpy), ``data`` (simulated, YOLO txt, COCO JSON and
labels.json datasets), ``augment`` (domain randomisation), ``model`` (the small set-prediction CNN), ``train``
(`dicom-node train`), ``export`` (ONNX + model card), ``evaluate`` (`dicom-node evaluate`).
"""
