/** The catalogue over a real fixture repository: identity across rescans, eviction of removed models. */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeFixtureRepository } from '@maas/models';
import { createLogger, defaultRepositoryPath, readModelConfig } from '@maas/shared';
import { ModelCatalogue, toCatalogueModel } from '../src/catalogue';
import { createDownstream } from '../src/downstream/clients';
import { EncoderBatchers } from '../src/pipelines/encoder-batchers';

const logger = createLogger({ service: 'orchestrator', level: 'silent' });

describe('model catalogue', () => {
  const repo = writeFixtureRepository(undefined, {
    models: ['bert-classifier', 'sentence-encoder'],
    tokenizers: 'tiny',
  });
  const catalogue = new ModelCatalogue({ root: repo.root, maxInputCharacters: 100, logger });
  const downstream = createDownstream({
    tokenizerTarget: '127.0.0.1:1',
    runnerTarget: '127.0.0.1:1',
    maxAttempts: 1,
    keepaliveMs: 20_000,
    maxMessageBytes: 1 << 20,
  });
  afterAll(() => downstream.close());

  it('keeps an unchanged model entry (and its micro-batcher) across rescans, and drops removed models', () => {
    catalogue.refresh();
    const batchers = new EncoderBatchers(downstream, {
      windowUs: 0,
      maxInFlight: 2,
      maxQueueRows: 100,
      maxQueueWaitMs: 100,
      overflow: 'refuse',
    });
    catalogue.onChange(() => batchers.retain((name) => catalogue.get(name) !== undefined));
    const entry = catalogue.get('bert-classifier')!;
    const batcher = batchers.get(entry);
    batchers.get(catalogue.get('sentence-encoder')!);
    catalogue.refresh();
    // The same entry, so the same batcher: its queue bound and service-time estimate carry on.
    expect(catalogue.get('bert-classifier')).toBe(entry);
    expect(batchers.get(catalogue.get('bert-classifier')!)).toBe(batcher);
    expect(batchers.size).toBe(2);

    rmSync(join(repo.root, 'sentence-encoder'), { recursive: true });
    catalogue.refresh();
    expect(catalogue.get('sentence-encoder')).toBeUndefined();
    expect(batchers.size).toBe(1);
  });
});

describe('object detection outputs', () => {
  const dir = join(defaultRepositoryPath(), 'nanodet-coco');
  const config = readModelConfig(dir, 'nanodet-coco');
  const versions = [{ version: 1, dir: join(dir, '1') }];

  it("a nanodet model's outputs are each head's scores and distribution, in the heads' order; its labels are read", () => {
    const model = toCatalogueModel('nanodet-coco', config, versions, 100);
    if (typeof model === 'string') throw new Error(model);
    expect(model.vision!.outputs).toEqual([
      'scores_8',
      'distribution_8',
      'scores_16',
      'distribution_16',
      'scores_32',
      'distribution_32',
    ]);
    expect(model.labelsByVersion.get('1')).toHaveLength(80);
  });

  it('refuses a nanodet model without heads, or naming an output it does not have', () => {
    const detection = config.objectDetection!;
    const withoutHeads = { ...config, objectDetection: { ...detection, heads: undefined } };
    expect(toCatalogueModel('n', withoutHeads, versions, 100)).toBe(
      'n: objectDetection.heads: required for format "nanodet"',
    );
    const heads = [{ ...detection.heads![0]!, distributionOutput: 'nope' }];
    const wrongOutput = { ...config, objectDetection: { ...detection, heads } };
    expect(toCatalogueModel('n', wrongOutput, versions, 100)).toBe(
      "n: objectDetection.heads.0.distributionOutput 'nope' is not among the model's outputs",
    );
  });
});
