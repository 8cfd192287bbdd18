/**
 * An RGB image made into a model's input as its config declares: resized by
 * sharp (fixed, letterbox, keep-ratio to a multiple, fixed height), then
 * scaled, normalised per channel, put in the declared channel order and
 * layout. Each prepared image carries the transform back to the original
 * pixels, so boxes found in the tensor are reported where they are in the
 * caller's image.
 */
import type { ImagePreprocess } from '@maas/shared';
import sharp from 'sharp';
import type { RgbImage } from './image-input.js';

/** The resized pixels and how tensor coordinates map back: original = (tensor − pad) / scale. */
export interface PreparedImage {
  /** The resized image, padding included (letterbox). */
  resized: RgbImage;
  scaleX: number;
  scaleY: number;
  padX: number;
  padY: number;
}

const roundTo = (value: number, multiple: number) =>
  Math.max(multiple, Math.round(value / multiple) * multiple);

/** The size an image is resized to (before letterbox padding) and the tensor's size. */
export function targetSize(
  width: number,
  height: number,
  resize: ImagePreprocess['resize'],
): { width: number; height: number; tensorWidth: number; tensorHeight: number } {
  switch (resize.mode) {
    case 'fixed':
      return {
        width: resize.width,
        height: resize.height,
        tensorWidth: resize.width,
        tensorHeight: resize.height,
      };
    case 'letterbox': {
      const scale = Math.min(resize.width / width, resize.height / height);
      const w = Math.max(1, Math.round(width * scale));
      const h = Math.max(1, Math.round(height * scale));
      return { width: w, height: h, tensorWidth: resize.width, tensorHeight: resize.height };
    }
    case 'keep_ratio': {
      // As PaddleOCR's detector preprocessing: shrink only when the longer side is over maxSide.
      const ratio = Math.min(1, resize.maxSide / Math.max(width, height));
      const w = Math.min(
        roundTo(width * ratio, resize.multiple),
        Math.ceil(resize.maxSide / resize.multiple) * resize.multiple,
      );
      const h = Math.min(
        roundTo(height * ratio, resize.multiple),
        Math.ceil(resize.maxSide / resize.multiple) * resize.multiple,
      );
      return { width: w, height: h, tensorWidth: w, tensorHeight: h };
    }
    case 'fixed_height': {
      const w = Math.min(
        resize.maxWidth,
        Math.ceil(Math.max(1, (resize.height * width) / height) / resize.widthMultiple) *
          resize.widthMultiple,
      );
      return { width: w, height: resize.height, tensorWidth: w, tensorHeight: resize.height };
    }
  }
}

export async function prepareImage(image: RgbImage, pre: ImagePreprocess): Promise<PreparedImage> {
  const size = targetSize(image.width, image.height, pre.resize);
  let pipeline = sharp(image.pixels, { raw: { width: image.width, height: image.height, channels: 3 } });
  if (size.width !== image.width || size.height !== image.height) {
    pipeline = pipeline.resize(size.width, size.height, { fit: 'fill' });
  }
  let padX = 0;
  let padY = 0;
  if (pre.resize.mode === 'letterbox') {
    padX = Math.floor((size.tensorWidth - size.width) / 2);
    padY = Math.floor((size.tensorHeight - size.height) / 2);
    const v = pre.resize.padValue;
    pipeline = pipeline.extend({
      left: padX,
      right: size.tensorWidth - size.width - padX,
      top: padY,
      bottom: size.tensorHeight - size.height - padY,
      background: { r: v, g: v, b: v },
    });
  }
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
  return {
    resized: { width: info.width, height: info.height, pixels: data },
    scaleX: size.width / image.width,
    scaleY: size.height / image.height,
    padX,
    padY,
  };
}

/** A batch tensor's values; images narrower than `width` are padded with 0 on the right. */
export function batchTensor(
  images: RgbImage[],
  pre: ImagePreprocess,
  width: number,
  height: number,
): { data: Float32Array | Uint8Array; shape: number[] } {
  const plane = width * height;
  const perImage = plane * 3;
  const data =
    pre.datatype === 'UINT8'
      ? new Uint8Array(images.length * perImage)
      : new Float32Array(images.length * perImage);
  const order = pre.channelOrder === 'bgr' ? [2, 1, 0] : [0, 1, 2];
  // mean and std are per channel of the tensor, that is in channelOrder.
  const mul = [0, 1, 2].map((c) => (pre.datatype === 'UINT8' ? 1 : pre.scale / pre.std[c]!));
  const add = [0, 1, 2].map((c) => (pre.datatype === 'UINT8' ? 0 : -pre.mean[c]! / pre.std[c]!));
  const nchw = pre.layout === 'nchw';
  images.forEach((image, n) => {
    const base = n * perImage;
    const src = image.pixels;
    for (let y = 0; y < image.height && y < height; y++) {
      for (let x = 0; x < image.width && x < width; x++) {
        const s = (y * image.width + x) * 3;
        for (let c = 0; c < 3; c++) {
          const value = src[s + order[c]!]! * mul[c]! + add[c]!;
          data[nchw ? base + c * plane + y * width + x : base + (y * width + x) * 3 + c] = value;
        }
      }
    }
  });
  return { data, shape: nchw ? [images.length, 3, height, width] : [images.length, height, width, 3] };
}
