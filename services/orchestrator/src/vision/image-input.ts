/**
 * The boundary where a caller's image becomes pixels: encoded bytes are
 * decoded by sharp (libvips), decoded tensors are checked; both against the
 * limits on bytes, pixels and sides, so that a malformed, truncated or
 * enormous image is refused with INVALID_ARGUMENT naming its field before any
 * work is spent on it. Everything downstream takes 8-bit RGB, row by row.
 */
import { invalidArgument } from '@maas/shared';
import type { Image } from '@maas/shared/gen/maas/orchestrator/v1/orchestrator';
import sharp from 'sharp';

export interface ImageLimits {
  maxBytes: number;
  maxPixels: number;
  maxSide: number;
}

/** 8-bit RGB pixels, height × width × 3. */
export interface RgbImage {
  width: number;
  height: number;
  pixels: Buffer;
}

const FORMATS = new Set(['png', 'jpeg', 'webp']);

function checkSize(field: string, width: number, height: number, limits: ImageLimits): void {
  if (width < 1 || height < 1)
    throw invalidArgument(field, `is ${width}×${height}: an image has at least one pixel`);
  if (width > limits.maxSide || height > limits.maxSide)
    throw invalidArgument(field, `is ${width}×${height}: a side has at most ${limits.maxSide} pixels`);
  if (width * height > limits.maxPixels)
    throw invalidArgument(field, `has ${width * height} pixels; the limit is ${limits.maxPixels}`);
}

async function decodeBytes(data: Buffer, field: string, limits: ImageLimits): Promise<RgbImage> {
  if (data.length === 0) throw invalidArgument(field, 'is empty');
  if (data.length > limits.maxBytes)
    throw invalidArgument(field, `is ${data.length} bytes; the limit is ${limits.maxBytes}`);
  let format: string | undefined;
  let width = 0;
  let height = 0;
  try {
    const meta = await sharp(data, { limitInputPixels: false }).metadata();
    format = meta.format;
    // Width and height as displayed: EXIF orientations 5–8 swap them.
    const swapped = (meta.orientation ?? 1) >= 5;
    width = (swapped ? meta.height : meta.width) ?? 0;
    height = (swapped ? meta.width : meta.height) ?? 0;
  } catch {
    throw invalidArgument(field, 'is not a PNG, JPEG or WebP image');
  }
  if (!format || !FORMATS.has(format))
    throw invalidArgument(field, `is a ${format ?? 'unknown'} image; PNG, JPEG and WebP are accepted`);
  checkSize(field, width, height, limits);
  try {
    const { data: pixels, info } = await sharp(data, {
      limitInputPixels: limits.maxPixels,
      failOn: 'truncated',
    })
      .autoOrient()
      // Transparent areas read as white paper, as a viewer shows them.
      .flatten({ background: '#ffffff' })
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { width: info.width, height: info.height, pixels };
  } catch (error) {
    throw invalidArgument(field, `cannot be decoded (${format}): ${(error as Error).message}`);
  }
}

function fromTensor(
  tensor: { width: number; height: number; channels: number; pixels: Buffer },
  field: string,
  limits: ImageLimits,
): RgbImage {
  const { width, height, channels, pixels } = tensor;
  if (![1, 3, 4].includes(channels))
    throw invalidArgument(`${field}.channels`, `is ${channels}; it must be 1, 3 or 4`);
  checkSize(field, width, height, limits);
  if (pixels.length !== width * height * channels) {
    throw invalidArgument(
      `${field}.pixels`,
      `has ${pixels.length} bytes; ${width}×${height}×${channels} needs ${width * height * channels}`,
    );
  }
  if (channels === 3) return { width, height, pixels };
  const rgb = Buffer.allocUnsafe(width * height * 3);
  for (let i = 0, o = 0; i < pixels.length; i += channels, o += 3) {
    rgb[o] = pixels[i]!;
    rgb[o + 1] = pixels[channels === 1 ? i : i + 1]!;
    rgb[o + 2] = pixels[channels === 1 ? i : i + 2]!;
  }
  return { width, height, pixels: rgb };
}

/** The images of a request, decoded; the first bad one is refused naming `images[i]`. */
export async function decodeImages(images: Image[], limits: ImageLimits): Promise<RgbImage[]> {
  return Promise.all(
    images.map((image, i) => {
      const field = `images[${i}]`;
      const source = image.source;
      if (!source) return Promise.reject(invalidArgument(field, 'needs data or tensor'));
      if (source.$case === 'data') return decodeBytes(source.value, `${field}.data`, limits);
      try {
        return Promise.resolve(fromTensor(source.value, `${field}.tensor`, limits));
      } catch (error) {
        return Promise.reject(error as Error);
      }
    }),
  );
}
