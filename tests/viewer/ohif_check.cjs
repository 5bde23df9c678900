// Open studies in the real OHIF Viewer (prebuilt @ohif/app, served by tests/ohif.py) in Debian's chromium,
// driven by playwright-core, as a radiologist would: open the study, double-click our plain SR, then our 3D SR,
// answer "Yes" to the tracking prompt. Reports OHIF's own state (display sets, SR measurements and their labels,
// tracked measurements) and every console message, as one JSON line on stdout.
// Input (JSON on stdin): {url, studies: [{study, name}], shots: dir or null}.
const { chromium } = require('playwright-core');

const SR_3D = '1.2.840.10008.5.1.4.1.1.88.34';
const SR_2D = '1.2.840.10008.5.1.4.1.1.88.33';

async function readStdin() {
  let data = '';
  for await (const chunk of process.stdin) data += chunk;
  return JSON.parse(data);
}

async function srState(page, sopClassUID) {
  return page.evaluate((sop) => {
    const ds = window.services.displaySetService.getActiveDisplaySets().find((d) => d.SOPClassUID === sop);
    if (!ds) return null;
    return {
      isLoaded: !!ds.isLoaded,
      isRehydratable: !!ds.isRehydratable,
      measurements: (ds.measurements || []).map((m) => ({
        loaded: !!m.loaded,
        labels: m.labels || [],
        coords: (m.coords || []).map((c) => c.ValueType),
        trackingIdentifier: m.TrackingIdentifier,
      })),
    };
  }, sopClassUID);
}

async function openSeries(page, text, sop) {
  await page.getByText(text, { exact: false }).first().dblclick();
  await page.waitForFunction((s) => {
    const ds = window.services.displaySetService.getActiveDisplaySets().find((d) => d.SOPClassUID === s);
    return ds && ds.isLoaded && (ds.measurements || []).every((m) => m.loaded);
  }, sop, { timeout: 60000 }).catch(() => {});
  await page.waitForTimeout(1500); // let the viewport render the annotations
}

async function checkStudy(browser, url, study, shots) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  // a radiologist who has used OHIF before: the onboarding tour was shown already
  await context.addInitScript(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  const page = await context.newPage();
  const consoleMessages = [];
  page.on('console', (m) => consoleMessages.push({ type: m.type(), text: m.text().slice(0, 500) }));
  page.on('pageerror', (e) => consoleMessages.push({ type: 'pageerror', text: String(e.message).slice(0, 500) }));
  const out = { study: study.study, name: study.name };
  try {
    await page.goto(`${url}/viewer?StudyInstanceUIDs=${study.study}`);
    await page.waitForFunction(() => window.services
      && window.services.displaySetService.getActiveDisplaySets().length >= 4, null, { timeout: 90000 });
    // the source image first, as a reader would see it (OHIF 3.13 loses the camera of a DX when an SR is opened
    // before its source image has finished loading)
    await page.waitForFunction(() => {
      const vp = window.services.cornerstoneViewportService.getCornerstoneViewport('default');
      return vp && vp.getImageData && vp.getImageData();
    }, null, { timeout: 60000 }).catch(() => {});
    await page.waitForTimeout(1000);
    out.displaySets = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets()
      .map((d) => ({ modality: d.Modality, sop: d.SOPClassUID, description: d.SeriesDescription || '' })));
    await openSeries(page, 'AI regions SR, 2D', SR_2D);
    out.sr2d = await srState(page, SR_2D);
    await openSeries(page, 'AI regions SR (', SR_3D);
    out.sr3d = await srState(page, SR_3D);
    out.view = await page.evaluate(() => {
      // is the source image in view: the camera's focal point inside the image's extent
      const vp = window.services.cornerstoneViewportService.getCornerstoneViewport('default');
      const im = vp && vp.getImageData && vp.getImageData();
      if (!im) return { image: false };
      const f = vp.getCamera().focalPoint;
      const [w, h] = [im.dimensions[0] * im.spacing[0], im.dimensions[1] * im.spacing[1]];
      const local = [0, 1].map((k) => [0, 1, 2].reduce((a, i) => a + (f[i] - im.origin[i]) * im.direction[k * 3 + i], 0));
      return { image: true, focalInside: local[0] >= -1 && local[0] <= w + 1 && local[1] >= -1 && local[1] <= h + 1 };
    });
    if (shots) await page.screenshot({ path: `${shots}/${study.name}.png` });
    if (!study.expected) return out;
    const yes = page.getByRole('button', { name: 'Yes' });
    await yes.first().waitFor({ timeout: 20000 });
    await yes.first().click();
    await page.waitForFunction(() => window.services.measurementService.getMeasurements().length > 0, null,
      { timeout: 30000 }).catch(() => {});
    await page.waitForTimeout(1000);
    out.tracked = await page.evaluate(() => window.services.measurementService.getMeasurements()
      .map((m) => ({ label: m.label, toolName: m.toolName, points: (m.points || []).length })));
    if (shots) await page.screenshot({ path: `${shots}/${study.name}_tracked.png` });
  } catch (e) {
    out.error = String(e && e.message ? e.message : e).slice(0, 1000);
  } finally {
    out.console = consoleMessages;
    await context.close();
  }
  return out;
}

(async () => {
  const input = await readStdin();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-gl=swiftshader', '--enable-unsafe-swiftshader'],
  });
  const results = [];
  for (const study of input.studies) {
    results.push(await checkStudy(browser, input.url, study, input.shots));
  }
  await browser.close();
  console.log(JSON.stringify({ results }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
