"""The class names SemPLeS writes into its CLIP text, "a photo of {name}." (spec §10), and its COCO slots.

VOC's 'player' stands for person. The release keeps COCO in 90 slots, one per raw category id (slot =
id - 1), 10 of which have no category; our COCO classes are the other 80 in category-id order, so COCO
class i sits in slot ``COCO_CLASS_SLOTS[i]``.
"""

VOC = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "player", "potted plant", "sheep", "sofa", "train", "tv monitor",
)

# The release's 90 COCO slots, in raw category-id order.
COCO_SLOTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk", "toilet",
    "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Category ids that COCO 2014 never uses.
COCO_EMPTY_SLOTS = frozenset({"street sign", "hat", "shoe", "eye glasses", "plate", "mirror", "window", "desk",
                              "door", "blender"})
COCO_CLASS_SLOTS = tuple(i for i, name in enumerate(COCO_SLOTS) if name not in COCO_EMPTY_SLOTS)
COCO = tuple(COCO_SLOTS[i] for i in COCO_CLASS_SLOTS)

BY_DATASET = {"voc": VOC, "coco": COCO}
