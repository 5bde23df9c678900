// Read our SRs with @cornerstonejs/adapters (the library OHIF uses to turn an SR into editable measurements) in
// Node: MeasurementReport.generateToolState on each SR, with the source image's geometry registered as
// cornerstone metadata. Input (JSON on stdin): {items: [{sr: path, image: {imageId, sopInstanceUID, rows, columns,
// ipp, rowCosines, columnCosines, spacing: [row, column], frameOfReferenceUID}}]}. Output: one JSON line.
import { readFileSync } from 'node:fs';
import dcmjs from 'dcmjs';
import { metaData } from '@cornerstonejs/core';
import { adaptersSR } from '@cornerstonejs/adapters';

const { MeasurementReport } = adaptersSR.Cornerstone3D;

let data = '';
for await (const chunk of process.stdin) data += chunk;
const input = JSON.parse(data);

const images = new Map(input.items.map((it) => [it.image.imageId, it.image]));
metaData.addProvider((type, imageId) => {
  const im = images.get(imageId);
  if (!im || type !== 'imagePlaneModule') return undefined;
  return {
    frameOfReferenceUID: im.frameOfReferenceUID,
    rows: im.rows,
    columns: im.columns,
    imagePositionPatient: im.ipp,
    rowCosines: im.rowCosines,
    columnCosines: im.columnCosines,
    rowPixelSpacing: im.spacing[0],
    columnPixelSpacing: im.spacing[1],
  };
}, 10000);

// the adapters print every measurement they extract; keep stdout for the one result line
const log = console.log;
console.log = () => {};
const warnings = [];
console.warn = (...args) => warnings.push(args.map(String).join(' ').slice(0, 300));

const results = [];
for (const it of input.items) {
  const buf = readFileSync(it.sr);
  const dicomData = dcmjs.data.DicomMessage.readFile(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomData.dict);
  const map = { [`${it.image.sopInstanceUID}:1`]: it.image.imageId };
  const state = MeasurementReport.generateToolState(dataset, map, metaData);
  const tools = {};
  for (const [toolType, list] of Object.entries(state)) {
    tools[toolType] = list.map((m) => ({
      label: m.annotation.data.label,
      points: (m.annotation.data.handles.points || []).length,
      referencedImageId: m.annotation.metadata.referencedImageId,
      area: Object.values(m.annotation.data.cachedStats || {})[0]?.area,
    }));
  }
  results.push({ sr: it.sr, tools });
}
log(JSON.stringify({ results, warnings }));
