import { z } from 'zod';

/**
 * The image side of a model config: how a decoded RGB image becomes the
 * model's input tensor, and how each vision task reads the outputs. Every
 * service validates it with the rest of the config; the orchestrator acts on it.
 */

const int = (min = 0) => z.number().int().min(min);
const triple = z.tuple([z.number(), z.number(), z.number()]);

export const imageResizeSchema = z.discriminatedUnion('mode', [
  /** Stretched to exactly width × height (classifiers exported for 224 × 224). */
  z.object({ mode: z.literal('fixed'), width: int(1), height: int(1) }).strict(),
  /** Scaled to fit width × height keeping its aspect ratio, centred, the rest filled (YOLO-style detectors). */
  z
    .object({
      mode: z.literal('letterbox'),
      width: int(1),
      height: int(1),
      /** The fill, 0–255 before normalisation (114 is Ultralytics' grey). */
      padValue: int().max(255).default(114),
    })
    .strict(),
  /**
   * Its aspect ratio kept, the longer side at most maxSide, each side rounded up to a multiple
   * (text detectors such as PaddleOCR's DB, whose strides need multiples of 32).
   */
  z
    .object({
      mode: z.literal('keep_ratio'),
      multiple: int(1).default(32),
      maxSide: int(1).default(960),
    })
    .strict(),
  /**
   * Scaled to a fixed height, the width following the aspect ratio up to maxWidth (text-line
   * recognizers); images of one batch are padded on the right to the widest.
   */
  z
    .object({
      mode: z.literal('fixed_height'),
      height: int(1),
      maxWidth: int(1).default(1280),
      /** Widths are rounded up to this, so lines of similar length share a batch shape. */
      widthMultiple: int(1).default(8),
    })
    .strict(),
]);
export type ImageResize = z.infer<typeof imageResizeSchema>;

export const imagePreprocessSchema = z
  .object({
    /** The model input the image fills; defaults to the first input. */
    input: z.string().optional(),
    resize: imageResizeSchema,
    /** value = (pixel × scale − mean[c]) / std[c], per channel in channelOrder. */
    scale: z.number().default(1 / 255),
    mean: triple.default([0, 0, 0]),
    std: triple.default([1, 1, 1]),
    channelOrder: z.enum(['rgb', 'bgr']).default('rgb'),
    layout: z.enum(['nchw', 'nhwc']).default('nchw'),
    /** UINT8 sends the resized pixels as they are (scale, mean and std unused). */
    datatype: z.enum(['FP32', 'UINT8']).default('FP32'),
  })
  .strict();
export type ImagePreprocess = z.infer<typeof imagePreprocessSchema>;

export const objectDetectionSchema = z
  .object({
    /**
     * yolov8: one output [1, 4 + classes, anchors] (or transposed), boxes cx, cy, w, h in input
     * pixels, then per-class scores. ssd: a boxes output [1, anchors, 4] and a scores output
     * [1, anchors, classes]. nanodet: per head (stride), class scores [1, cells, classes] and
     * box-side distributions [1, cells, 4 × bins] over a grid of the input (NanoDet's GFL head).
     */
    format: z.enum(['yolov8', 'ssd', 'nanodet']),
    output: z.string().optional(),
    boxesOutput: z.string().optional(),
    scoresOutput: z.string().optional(),
    /** How an SSD-style model's boxes read. */
    boxFormat: z.enum(['xyxy', 'yxyx', 'cxcywh']).default('xyxy'),
    /** An SSD-style model's boxes in [0, 1] of the input rather than in input pixels. */
    normalizedBoxes: z.boolean().default(true),
    /**
     * NanoDet's heads: the grid cell of each is stride × stride input pixels, cells row by row;
     * scores are probabilities (sigmoid applied), distributions logits per side (left, top,
     * right, bottom), `bins` each over distances 0 … bins − 1 strides from the cell's centre.
     */
    heads: z
      .array(
        z
          .object({
            stride: int(1),
            scoresOutput: z.string().min(1),
            distributionOutput: z.string().min(1),
          })
          .strict(),
      )
      .min(1)
      .optional(),
    /** NanoDet: bins per box side (reg_max + 1; NanoDet-Plus has 8, the first NanoDets 11). */
    bins: int(2).default(8),
    /** A class index that means "no object" (SSD's background), never reported. */
    backgroundClass: int().optional(),
    scoreThreshold: z.number().min(0).max(1).default(0.25),
    iouThreshold: z.number().min(0).max(1).default(0.45),
    maxDetections: int(1).max(1000).default(100),
  })
  .strict();
export type ObjectDetectionConfig = z.infer<typeof objectDetectionSchema>;

export const textDetectionSchema = z
  .object({
    /** The text recognition model ReadText reads each detected line with. */
    recognizer: z.string().min(1),
    /** An image classification model with labels "0" and "180" that finds upside-down lines. */
    directionClassifier: z.string().min(1).optional(),
    /** Probability above which a pixel of the map is text (DB's binarisation threshold). */
    threshold: z.number().min(0).max(1).default(0.3),
    /** Mean probability inside a region below which it is dropped. */
    boxThreshold: z.number().min(0).max(1).default(0.6),
    /** How far a region is grown back out (DB shrinks text regions in training): area × ratio / perimeter. */
    unclipRatio: z.number().min(0).default(1.5),
    /** Regions whose shorter side is below this many map pixels are dropped. */
    minSize: z.number().min(0).default(3),
    /** Regions considered per image, largest first. */
    maxCandidates: int(1).default(1000),
    /** Lines read below this mean confidence are dropped. */
    minLineConfidence: z.number().min(0).max(1).default(0.5),
    /** Direction classifier score above which a line is turned by 180°. */
    directionThreshold: z.number().min(0).max(1).default(0.9),
  })
  .strict();
export type TextDetectionConfig = z.infer<typeof textDetectionSchema>;

export const textRecognitionSchema = z
  .object({
    /** The characters, one per line, in the version folder; index i + 1 of the output is line i. */
    charset: z.string().min(1),
    /** PaddleOCR's dictionaries end with an implicit space character. */
    appendSpace: z.boolean().default(true),
  })
  .strict();
export type TextRecognitionConfig = z.infer<typeof textRecognitionSchema>;

/**
 * The outputs the runner adds to a text recognizer (best-class-outputs.ts
 * there): per step, the best class and its probability — all that greedy
 * CTC decoding reads, instead of the whole [N, steps, classes] distribution
 * (13 MB for a receipt's 7 lines at 6,625 classes) crossing the wire.
 */
export const bestClassOutputs = (output: string) => ({
  index: `${output}.argmax`,
  probability: `${output}.max`,
});

export const IMAGE_TASKS = [
  'image_classification',
  'object_detection',
  'text_detection',
  'text_recognition',
] as const;
export type ImageTask = (typeof IMAGE_TASKS)[number];
