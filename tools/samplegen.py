"""Deterministic synthetic images for the sandbox catalogue, tests and benchmarks.

A developer tool run from the checkout, not part of the installed package.
``python -m tools.samplegen samples DIR`` rebuilds the committed sample set: studio shots of
synthetic products with 1688-style wholesale metadata (the sandbox's built-in catalogue, package
data in ``engine/sandbox/data/catalogue``; ``--catalogue CAT`` writes it elsewhere), buyer photos
of those products (``DIR/queries``), awkward files (``DIR/awkward``) and the ground truth
(``DIR/truth.json``). ``corpus DIR --count N [--large]`` streams a benchmark corpus of buyer
photos to disk; ``large FILE [--side 6000]`` writes one very large photo.

Every image is drawn with Pillow from a fixed seed, so a rerun writes the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from engine.sandbox.catalogue import DEFAULT_CATALOGUE, PriceTier, Product

__all__ = ["PRODUCT_SPECS", "ProductSpec", "build_products", "main", "render_object"]

RGB = tuple[int, int, int]
_CANVAS = 1000  # products are drawn in a 1000x1000 coordinate space
_CATALOGUE_SIDE = 480
_SEED = 1688
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ProductSpec:
    """How one synthetic product looks and what its offer says."""

    kind: str
    title: str
    title_en: str
    unit: str
    price: str
    category_id: int
    trade: str
    body: RGB
    trim: RGB
    accent: RGB
    pattern: str
    mark: str


# One offer per line reads better than the formatter's one field per line.
# fmt: off
PRODUCT_SPECS: tuple[ProductSpec, ...] = (
    ProductSpec("bottle", "304不锈钢保温杯 大容量 商务便携", "304 stainless steel vacuum flask, large capacity, portable", "个", "12.50", 1031912, "kitchen", (40, 90, 170), (200, 205, 210), (250, 250, 250), "solid", "star"),  # noqa: E501
    ProductSpec("mug", "北欧简约陶瓷马克杯 带手柄 办公室水杯", "Nordic minimalist ceramic mug with handle, office cup", "个", "6.80", 1031913, "kitchen", (245, 240, 225), (60, 60, 60), (220, 60, 50), "hstripes", "circle"),  # noqa: E501
    ProductSpec("shoe", "男士休闲运动鞋 透气网面跑步鞋", "Men's casual sneakers, breathable mesh running shoes", "双", "38.00", 1037191, "shoes", (220, 40, 40), (245, 245, 245), (30, 30, 30), "solid", "triangle"),  # noqa: E501
    ProductSpec("handbag", "女士PU手提包 大容量单肩包 通勤", "Women's PU handbag, large shoulder bag for commuting", "个", "45.00", 1042954, "bags", (150, 90, 50), (70, 40, 20), (230, 190, 80), "solid", "diamond"),  # noqa: E501
    ProductSpec("lamp", "LED护眼台灯 卧室床头 三档调光", "LED eye-care desk lamp, bedside, three-level dimming", "台", "29.90", 1038378, "lighting", (250, 210, 60), (90, 90, 95), (255, 255, 255), "solid", "ring"),  # noqa: E501
    ProductSpec("teddy", "毛绒泰迪熊公仔 儿童玩偶 生日礼物", "Plush teddy bear doll for children, birthday gift", "个", "16.50", 1042719, "toys", (190, 130, 70), (120, 70, 30), (240, 200, 210), "solid", "circle"),  # noqa: E501
    ProductSpec("box", "牛皮纸礼品盒 节日包装盒 可定制LOGO", "Kraft paper gift box, festive packaging, custom logo", "个", "1.20", 1047731, "home", (200, 160, 110), (160, 120, 75), (200, 30, 40), "solid", "star"),  # noqa: E501
    ProductSpec("backpack", "学生双肩包 大容量防水书包 韩版", "Student backpack, large waterproof school bag", "个", "32.00", 1042957, "bags", (30, 120, 80), (20, 70, 50), (250, 140, 30), "solid", "triangle"),  # noqa: E501
    ProductSpec("cap", "纯棉棒球帽 男女同款 遮阳鸭舌帽", "Cotton baseball cap, unisex sun visor", "顶", "8.50", 1043109, "apparel", (20, 30, 70), (240, 240, 240), (230, 50, 50), "solid", "star"),  # noqa: E501
    ProductSpec("tshirt", "纯棉圆领短袖T恤 男女宽松 可印字", "Cotton crew-neck T-shirt, loose fit, printable", "件", "14.00", 1043113, "apparel", (250, 250, 245), (20, 60, 150), (240, 90, 40), "hstripes", "diamond"),  # noqa: E501
    ProductSpec("umbrella", "全自动折叠雨伞 晴雨两用 防晒", "Automatic folding umbrella, sun and rain, UV protection", "把", "19.80", 1047902, "home", (120, 40, 140), (40, 40, 40), (240, 220, 250), "dots", "none"),  # noqa: E501
    ProductSpec("headphones", "头戴式蓝牙耳机 重低音 无线降噪", "Over-ear Bluetooth headphones, deep bass, noise cancelling", "副", "58.00", 1031557, "electronics", (30, 30, 35), (200, 40, 60), (180, 180, 190), "solid", "ring"),  # noqa: E501
    ProductSpec("vase", "陶瓷花瓶 北欧风客厅摆件 插花", "Ceramic vase, Nordic living-room decor", "个", "22.00", 1047764, "home", (70, 160, 200), (240, 240, 240), (20, 60, 110), "vstripes", "none"),  # noqa: E501
    ProductSpec("kettle", "不锈钢电热水壶 1.8L 自动断电", "Stainless steel electric kettle 1.8 L, auto shut-off", "台", "39.00", 1038521, "electronics", (200, 200, 205), (30, 30, 30), (60, 150, 230), "band", "circle"),  # noqa: E501
    ProductSpec("phonecase", "硅胶手机壳 防摔全包 卡通图案", "Silicone phone case, shockproof full cover, cartoon print", "个", "3.50", 1031560, "electronics", (250, 150, 190), (250, 250, 250), (250, 200, 40), "dots", "star"),  # noqa: E501
    ProductSpec("stool", "实木小板凳 家用矮凳 换鞋凳", "Solid wood stool, low seat for changing shoes", "张", "18.00", 1047812, "home", (170, 110, 60), (120, 75, 40), (230, 200, 150), "check", "none"),  # noqa: E501
    ProductSpec("watch", "石英手表 简约男士腕表 皮带", "Quartz wristwatch, minimalist men's watch, leather strap", "只", "26.00", 1043210, "accessories", (190, 160, 60), (60, 35, 20), (30, 30, 30), "solid", "none"),  # noqa: E501
    ProductSpec("sunglasses", "偏光太阳镜 时尚墨镜 防紫外线", "Polarised sunglasses, fashion shades, UV400", "副", "9.90", 1043221, "accessories", (25, 25, 30), (210, 170, 40), (80, 80, 90), "solid", "none"),  # noqa: E501
    ProductSpec("fan", "USB桌面小风扇 静音 三档风速", "USB desk fan, quiet, three speeds", "台", "15.60", 1038602, "electronics", (120, 210, 200), (250, 250, 250), (40, 110, 100), "solid", "none"),  # noqa: E501
    ProductSpec("bottle", "儿童运动水杯 吸管款 防漏Tritan", "Kids' sports water bottle with straw, leak-proof Tritan", "个", "9.80", 1031912, "kitchen", (250, 120, 30), (250, 230, 60), (40, 40, 40), "dots", "triangle"),  # noqa: E501
    ProductSpec("mug", "搪瓷复古杯 怀旧大口杯 印花", "Retro enamel mug, nostalgic wide cup, printed", "个", "5.20", 1031913, "kitchen", (60, 160, 70), (250, 250, 250), (200, 30, 30), "check", "star"),  # noqa: E501
    ProductSpec("shoe", "女款帆布鞋 低帮小白鞋 学生", "Women's canvas shoes, low-top white sneakers", "双", "22.00", 1037191, "shoes", (250, 250, 250), (40, 50, 130), (200, 40, 40), "vstripes", "circle"),  # noqa: E501
    ProductSpec("handbag", "编织草编包 沙滩度假手提袋", "Woven straw bag, beach holiday tote", "个", "28.00", 1042954, "bags", (230, 200, 140), (150, 100, 50), (40, 130, 180), "check", "none"),  # noqa: E501
    ProductSpec("tshirt", "速干运动T恤 健身短袖 男款", "Quick-dry sports T-shirt, gym short sleeve, men's", "件", "17.50", 1043113, "apparel", (30, 30, 30), (250, 200, 0), (250, 250, 250), "diagonal", "triangle"),  # noqa: E501
    ProductSpec("cap", "渔夫帽 纯色遮阳帽 春夏", "Bucket hat, plain colour sun hat, spring-summer", "顶", "7.90", 1043109, "apparel", (200, 230, 120), (90, 120, 40), (250, 250, 250), "solid", "ring"),  # noqa: E501
    ProductSpec("backpack", "户外登山包 40L 徒步旅行背包", "Outdoor hiking backpack 40 L, trekking travel pack", "个", "68.00", 1042957, "bags", (230, 90, 20), (60, 60, 60), (240, 240, 240), "hstripes", "diamond"),  # noqa: E501
    ProductSpec("box", "亚克力收纳盒 桌面化妆品整理盒", "Acrylic storage box, desktop cosmetics organiser", "个", "11.00", 1047735, "home", (160, 200, 240), (110, 160, 220), (250, 250, 250), "vstripes", "none"),  # noqa: E501
    ProductSpec("lamp", "复古编织落地灯罩 藤编吊灯", "Retro woven lamp shade, rattan pendant light", "个", "48.00", 1038378, "lighting", (110, 60, 30), (200, 150, 90), (30, 30, 30), "diagonal", "none"),  # noqa: E501
)
# fmt: on

# Where each trade clusters in China: (province, city, county-level prefix of company names).
_REGIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "kitchen": (
        ("浙江省", "金华市", "义乌市"),
        ("浙江省", "台州市", "台州"),
        ("广东省", "揭阳市", "揭阳"),
    ),
    "shoes": (
        ("福建省", "泉州市", "晋江市"),
        ("福建省", "莆田市", "莆田"),
        ("浙江省", "温州市", "温州"),
    ),
    "bags": (
        ("广东省", "广州市", "广州"),
        ("河北省", "保定市", "白沟"),
        ("浙江省", "金华市", "义乌市"),
    ),
    "lighting": (("广东省", "中山市", "中山"), ("浙江省", "宁波市", "宁波")),
    "toys": (("广东省", "汕头市", "汕头市澄海区"), ("浙江省", "金华市", "义乌市")),
    "apparel": (
        ("江苏省", "苏州市", "常熟市"),
        ("浙江省", "杭州市", "杭州"),
        ("广东省", "广州市", "广州"),
    ),
    "electronics": (("广东省", "深圳市", "深圳市"), ("广东省", "东莞市", "东莞市")),
    "home": (
        ("浙江省", "宁波市", "宁波"),
        ("江苏省", "南通市", "南通"),
        ("浙江省", "金华市", "义乌市"),
    ),
    "accessories": (("浙江省", "温州市", "温州"), ("广东省", "深圳市", "深圳市")),
}
_TRADES = {
    "kitchen": "日用品",
    "shoes": "鞋业",
    "bags": "皮具",
    "lighting": "照明电器",
    "toys": "玩具",
    "apparel": "服饰",
    "electronics": "电子科技",
    "home": "家居用品",
    "accessories": "饰品",
}
_BRANDS = (
    "佳远", "鑫达", "恒润", "优品", "晨光", "汇丰", "博雅", "盛世", "宏图", "美诺", "金诚",
    "瑞祥", "康威", "格林", "创美", "华艺", "天浩", "锦程", "永利", "新时代",
)  # fmt: skip


def build_products() -> list[Product]:
    """The catalogue's offers, in :data:`PRODUCT_SPECS` order (deterministic)."""
    rng = random.Random(_SEED)
    products: list[Product] = []
    used_ids: set[int] = set()
    for index, spec in enumerate(PRODUCT_SPECS):
        offer_id = rng.randrange(520_000_000_000, 790_000_000_000)
        while offer_id in used_ids:
            offer_id = rng.randrange(520_000_000_000, 790_000_000_000)
        used_ids.add(offer_id)
        province, city, prefix = rng.choice(_REGIONS[spec.trade])
        company = f"{prefix}{rng.choice(_BRANDS)}{_TRADES[spec.trade]}有限公司"
        min_order = rng.choice((1, 2, 2, 3, 5, 10, 20, 50, 100, 200, 500))
        low = float(spec.price)
        tiers: tuple[PriceTier, ...] = ()
        if index % 3 == 1:
            # Quantity breaks: the first starts at the MOQ, the last carries the lowest price.
            quantities = (min_order, min_order * 10, min_order * 100)
            factors = (1.2, 1.08, 1.0)
            tiers = tuple(
                PriceTier(q, f"{low * f:.2f}") for q, f in zip(quantities, factors, strict=True)
            )
        products.append(
            Product(
                offer_id=offer_id,
                image=f"p{index + 1:03d}.jpg",
                title=spec.title,
                title_en=spec.title_en,
                price=f"{low:.2f}",
                price_tiers=tiers,
                min_order=min_order,
                unit=spec.unit,
                month_sold=rng.choice((0, 3, 12, 48, 150, 420, 980, 1520, 3600, 12800)),
                company=company,
                province=province,
                city=city,
                freight="free" if rng.random() < 0.45 else "paid",
                category_id=spec.category_id,
            )
        )
    return products


# --- drawing ------------------------------------------------------------------------------

Box = tuple[int, int, int, int]
Mark = tuple[int, int, int]  # centre x, centre y, radius of the logo mark
_KindFn = Callable[
    [ImageDraw.ImageDraw, ImageDraw.ImageDraw, ImageDraw.ImageDraw, ProductSpec], Mark
]


def _tone(colour: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or lighten (factor > 1, towards white) a colour."""
    if factor <= 1:
        return (round(colour[0] * factor), round(colour[1] * factor), round(colour[2] * factor))
    t = factor - 1
    red, green, blue = (round(c + (255 - c) * t) for c in colour)
    return (red, green, blue)


def _bottle(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((380, 260, 620, 900), radius=60, fill=255)
    front.rounded_rectangle((395, 120, 605, 262), radius=25, fill=s.trim)
    front.rectangle((380, 262, 620, 292), fill=s.accent)
    return (500, 560, 70)


def _mug(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((240, 300, 640, 820), radius=40, fill=255)
    back.ellipse((560, 400, 810, 700), outline=s.trim, width=55)
    front.ellipse((246, 282, 634, 340), fill=_tone(s.body, 0.7))
    return (440, 570, 85)


def _shoe(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.polygon(
        [
            (150, 700),
            (170, 520),
            (330, 470),
            (460, 370),
            (570, 370),
            (610, 470),
            (820, 560),
            (885, 640),
            (885, 705),
        ],
        fill=255,
    )
    front.rounded_rectangle((125, 690, 905, 775), radius=38, fill=s.trim)
    for i in range(4):
        x = 470 + i * 38
        front.line([(x, 400 + i * 22), (x + 70, 440 + i * 22)], fill=s.accent, width=14)
    front.ellipse((170, 520, 250, 600), fill=_tone(s.body, 0.6))
    return (700, 620, 50)


def _handbag(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.polygon([(250, 420), (750, 420), (840, 860), (160, 860)], fill=255)
    back.arc((320, 190, 680, 570), 180, 360, fill=s.trim, width=42)
    front.rectangle((250, 420, 750, 480), fill=s.trim)
    front.rectangle((465, 470, 535, 540), fill=s.accent)
    return (500, 680, 75)


def _lamp(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.polygon([(330, 160), (670, 160), (790, 490), (210, 490)], fill=255)
    back.rectangle((482, 490, 518, 820), fill=s.trim)
    back.line([(500, 560), (610, 660)], fill=s.trim, width=30)
    front.ellipse((330, 795, 670, 885), fill=s.trim)
    front.rectangle((210, 472, 790, 492), fill=s.accent)
    return (500, 330, 65)


def _teddy(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    for box in ((330, 160, 670, 500), (295, 130, 425, 260), (575, 130, 705, 260)):
        body.ellipse(box, fill=255)
    for box in ((270, 440, 730, 890), (190, 500, 340, 650), (660, 500, 810, 650)):
        body.ellipse(box, fill=255)
    body.ellipse((300, 800, 440, 920), fill=255)
    body.ellipse((560, 800, 700, 920), fill=255)
    front.ellipse((325, 165, 395, 235), fill=s.accent)
    front.ellipse((605, 165, 675, 235), fill=s.accent)
    front.ellipse((395, 300, 440, 345), fill=(25, 20, 20))
    front.ellipse((560, 300, 605, 345), fill=(25, 20, 20))
    front.ellipse((440, 360, 560, 450), fill=_tone(s.body, 1.4))
    front.ellipse((478, 370, 522, 402), fill=(25, 20, 20))
    front.ellipse((380, 560, 620, 820), fill=s.accent)
    return (500, 690, 50)


def _box(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rectangle((220, 400, 640, 860), fill=255)
    front.polygon([(220, 400), (380, 240), (800, 240), (640, 400)], fill=_tone(s.body, 1.3))
    front.polygon([(640, 400), (800, 240), (800, 700), (640, 860)], fill=_tone(s.trim, 0.8))
    front.rectangle((410, 400, 450, 860), fill=s.accent)
    front.polygon([(560, 240), (600, 240), (440, 400), (400, 400)], fill=s.accent)
    return (320, 630, 55)


def _backpack(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((290, 220, 710, 890), radius=130, fill=255)
    back.arc((400, 110, 600, 320), 180, 360, fill=s.trim, width=32)
    back.rounded_rectangle((240, 300, 300, 800), radius=25, fill=s.trim)
    back.rounded_rectangle((700, 300, 760, 800), radius=25, fill=s.trim)
    front.rounded_rectangle((350, 560, 650, 850), radius=55, fill=s.trim)
    front.line([(365, 610), (635, 610)], fill=s.accent, width=12)
    return (500, 400, 65)


def _cap(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.chord((250, 290, 750, 790), 180, 360, fill=255)
    front.ellipse((210, 500, 920, 610), fill=s.trim)
    front.ellipse((478, 272, 522, 316), fill=s.accent)
    front.line([(500, 300), (500, 540)], fill=_tone(s.body, 0.75), width=8)
    return (400, 440, 60)


def _tshirt(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.polygon(
        [
            (380, 170),
            (440, 210),
            (560, 210),
            (620, 170),
            (820, 260),
            (750, 430),
            (675, 390),
            (675, 870),
            (325, 870),
            (325, 390),
            (250, 430),
            (180, 260),
        ],
        fill=255,
    )
    front.chord((425, 140, 575, 270), 0, 180, fill=s.trim)
    return (500, 520, 75)


def _umbrella(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.pieslice((130, 160, 870, 900), 180, 360, fill=255)
    back.line([(500, 530), (500, 850)], fill=s.trim, width=24)
    back.arc((420, 790, 560, 930), 0, 180, fill=s.trim, width=24)
    for angle in (200, 240, 300, 340):
        rad = math.radians(angle)
        end = (500 + 370 * math.cos(rad), 530 + 370 * math.sin(rad))
        front.line([(500, 530), end], fill=s.accent, width=9)
    front.ellipse((485, 140, 515, 175), fill=s.trim)
    return (500, 420, 50)


def _headphones(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((200, 470, 360, 780), radius=60, fill=255)
    body.rounded_rectangle((640, 470, 800, 780), radius=60, fill=255)
    back.arc((230, 160, 770, 760), 180, 360, fill=s.trim, width=55)
    back.line([(257, 430), (257, 490)], fill=s.trim, width=40)
    back.line([(743, 430), (743, 490)], fill=s.trim, width=40)
    front.rounded_rectangle((345, 510, 395, 740), radius=20, fill=s.accent)
    front.rounded_rectangle((605, 510, 655, 740), radius=20, fill=s.accent)
    return (280, 625, 45)


def _vase(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.ellipse((260, 390, 740, 890), fill=255)
    body.rectangle((415, 180, 585, 460), fill=255)
    front.rounded_rectangle((385, 155, 615, 210), radius=16, fill=s.trim)
    return (500, 650, 80)


def _kettle(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.ellipse((240, 320, 760, 880), fill=255)
    back.polygon([(690, 560), (880, 390), (905, 420), (730, 690)], fill=_tone(s.body, 0.85))
    back.arc((320, 130, 680, 490), 180, 360, fill=s.trim, width=44)
    front.ellipse((400, 300, 600, 370), fill=s.trim)
    front.ellipse((470, 275, 530, 320), fill=s.accent)
    front.rectangle((300, 820, 700, 880), fill=s.trim)
    return (500, 620, 70)


def _phonecase(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((330, 110, 670, 890), radius=75, fill=255)
    front.rounded_rectangle((370, 150, 520, 340), radius=32, fill=s.trim)
    front.ellipse((395, 170, 455, 230), fill=(20, 20, 25))
    front.ellipse((435, 265, 495, 325), fill=(20, 20, 25))
    return (500, 620, 75)


def _stool(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.rounded_rectangle((220, 290, 780, 450), radius=40, fill=255)
    for top, bottom in (((300, 440), (240, 890)), ((700, 440), (760, 890))):
        back.line([top, bottom], fill=s.trim, width=40)
    for top, bottom in (((400, 440), (380, 820)), ((600, 440), (620, 820))):
        back.line([top, bottom], fill=_tone(s.trim, 0.75), width=32)
    back.line([(265, 700), (735, 700)], fill=s.trim, width=26)
    return (500, 370, 45)


def _watch(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.ellipse((320, 320, 680, 680), fill=255)
    back.rounded_rectangle((395, 90, 605, 380), radius=24, fill=s.trim)
    back.rounded_rectangle((395, 620, 605, 910), radius=24, fill=s.trim)
    back.rectangle((670, 480, 705, 520), fill=s.body)
    front.ellipse((360, 360, 640, 640), fill=(248, 246, 238))
    front.line([(500, 500), (500, 395)], fill=s.accent, width=12)
    front.line([(500, 500), (585, 540)], fill=s.accent, width=9)
    for k in range(12):
        rad = math.radians(k * 30)
        front.ellipse(
            (500 + 118 * math.cos(rad) - 7, 500 + 118 * math.sin(rad) - 7,
             500 + 118 * math.cos(rad) + 7, 500 + 118 * math.sin(rad) + 7),
            fill=s.accent,
        )  # fmt: skip
    return (500, 560, 25)


def _sunglasses(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.ellipse((150, 380, 470, 630), fill=255)
    body.ellipse((530, 380, 850, 630), fill=255)
    front.arc((430, 390, 570, 490), 200, 340, fill=s.trim, width=22)
    front.line([(150, 450), (70, 420)], fill=s.trim, width=20)
    front.line([(850, 450), (930, 420)], fill=s.trim, width=20)
    front.arc((150, 380, 470, 630), 190, 350, fill=s.trim, width=18)
    front.arc((530, 380, 850, 630), 190, 350, fill=s.trim, width=18)
    front.ellipse((210, 430, 300, 480), fill=s.accent)
    front.ellipse((590, 430, 680, 480), fill=s.accent)
    return (310, 540, 25)


def _fan(
    body: ImageDraw.ImageDraw, back: ImageDraw.ImageDraw, front: ImageDraw.ImageDraw, s: ProductSpec
) -> Mark:
    body.ellipse((240, 130, 760, 650), fill=255)
    back.rectangle((478, 640, 522, 820), fill=s.accent)
    front.ellipse((320, 800, 680, 890), fill=s.accent)
    for angle in (0, 120, 240):
        front.pieslice((300, 190, 700, 590), angle, angle + 60, fill=s.trim)
    front.ellipse((455, 345, 545, 435), fill=s.accent)
    front.ellipse((240, 130, 760, 650), outline=_tone(s.body, 0.7), width=14)
    return (500, 390, 0)


_KINDS: dict[str, _KindFn] = {
    "bottle": _bottle,
    "mug": _mug,
    "shoe": _shoe,
    "handbag": _handbag,
    "lamp": _lamp,
    "teddy": _teddy,
    "box": _box,
    "backpack": _backpack,
    "cap": _cap,
    "tshirt": _tshirt,
    "umbrella": _umbrella,
    "headphones": _headphones,
    "vase": _vase,
    "kettle": _kettle,
    "phonecase": _phonecase,
    "stool": _stool,
    "watch": _watch,
    "sunglasses": _sunglasses,
    "fan": _fan,
}


def _pattern(spec: ProductSpec) -> Image.Image:
    """The body's fabric: body colour with the trim colour laid out as ``spec.pattern``."""
    img = Image.new("RGB", (_CANVAS, _CANVAS), spec.body)
    draw = ImageDraw.Draw(img)
    n = _CANVAS
    if spec.pattern == "hstripes":
        for y in range(0, n, 90):
            draw.rectangle((0, y, n, y + 38), fill=spec.trim)
    elif spec.pattern == "vstripes":
        for x in range(0, n, 90):
            draw.rectangle((x, 0, x + 38, n), fill=spec.trim)
    elif spec.pattern == "dots":
        for row, y in enumerate(range(30, n, 85)):
            for x in range(30 + (row % 2) * 42, n, 85):
                draw.ellipse((x - 20, y - 20, x + 20, y + 20), fill=spec.trim)
    elif spec.pattern == "check":
        for y in range(0, n, 100):
            for x in range(0, n, 100):
                if (x + y) // 100 % 2 == 0:
                    draw.rectangle((x, y, x + 99, y + 99), fill=spec.trim)
    elif spec.pattern == "diagonal":
        for x in range(-n, n, 120):
            draw.polygon([(x, n), (x + 50, n), (x + 50 + n, 0), (x + n, 0)], fill=spec.trim)
    elif spec.pattern == "band":
        draw.rectangle((0, 440, n, 560), fill=spec.trim)
    return img


def _draw_mark(draw: ImageDraw.ImageDraw, mark: Mark, shape: str, colour: RGB) -> None:
    x, y, r = mark
    if shape == "none" or r == 0:
        return
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=max(6, r // 4))
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.7, y), (x, y + r), (x - r * 0.7, y)], fill=colour)
    elif shape == "star":
        points = [
            (
                x + (r if k % 2 == 0 else r * 0.42) * math.sin(math.pi * k / 5),
                y - (r if k % 2 == 0 else r * 0.42) * math.cos(math.pi * k / 5),
            )
            for k in range(10)
        ]
        draw.polygon(points, fill=colour)


@cache
def render_object(index: int) -> Image.Image:
    """Product ``index`` of :data:`PRODUCT_SPECS` as RGBA on transparency, cropped to it.

    Drawn at twice the working size and shrunk, for anti-aliased edges.
    """
    spec = PRODUCT_SPECS[index]
    size = (_CANVAS, _CANVAS)
    mask = Image.new("L", size, 0)
    back = Image.new("RGBA", size, (0, 0, 0, 0))
    front = Image.new("RGBA", size, (0, 0, 0, 0))
    mark = _KINDS[spec.kind](
        ImageDraw.Draw(mask), ImageDraw.Draw(back), ImageDraw.Draw(front), spec
    )
    fabric = _pattern(spec)
    _draw_mark(ImageDraw.Draw(fabric), mark, spec.mark, spec.accent)
    # Cylindrical shading across the body's width: light from the upper left.
    left, _, right, _ = mask.getbbox() or (0, 0, _CANVAS, _CANVAS)
    xs = np.clip((np.arange(_CANVAS) - left) / max(right - left, 1), 0.0, 1.0)
    shade = 0.72 + 0.36 * np.sin(np.pi * np.clip(xs * 1.15, 0.0, 1.0)) ** 0.7
    shaded = np.asarray(fabric, dtype=np.float32) * shade[None, :, None]
    fabric = Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8))
    layer = back.copy()
    layer.paste(fabric, (0, 0), mask)  # blends alpha too: the body becomes opaque
    layer = Image.alpha_composite(layer, front)
    half = layer.resize((_CANVAS // 2, _CANVAS // 2), Image.Resampling.LANCZOS)
    return half.crop(half.getbbox())


def _studio_shot(index: int) -> Image.Image:
    """Catalogue photo: the product centred on a light seamless background with a soft shadow."""
    obj = render_object(index)
    side = _CATALOGUE_SIDE
    tint = (248, 248, 248) if index % 3 else (243, 242, 240)
    canvas = Image.new("RGB", (side, side), tint)
    scale = 0.82 * side / max(obj.size)
    obj = obj.resize(
        (round(obj.width * scale), round(obj.height * scale)), Image.Resampling.LANCZOS
    )
    x, y = (side - obj.width) // 2, (side - obj.height) // 2
    shadow = Image.new("L", (side, side), 0)
    ImageDraw.Draw(shadow).ellipse(
        (x + obj.width * 0.1, y + obj.height * 0.93, x + obj.width * 0.9, y + obj.height * 1.04),
        fill=30,  # faint: wholesale main images are shot on near-pure white
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(12))
    canvas.paste((150, 150, 150), (0, 0), shadow)
    canvas.paste(obj, (x, y), obj)
    return canvas


# --- buyer photos -------------------------------------------------------------------------


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A surface a buyer might shoot on: plain, gradient, wood, tablecloth check or granite."""
    style = int(rng.integers(5))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.integers(40, 230, size=3).astype(np.float32)
    if style == 0:
        arr = np.broadcast_to(base, (height, width, 3)).copy()
    elif style == 1:
        other = rng.integers(40, 230, size=3).astype(np.float32)
        angle = rng.uniform(0, math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / (width + height)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = base + (other - base) * t[:, :, None]
    elif style == 2:
        wood = np.array([150, 100, 60], dtype=np.float32) * rng.uniform(0.6, 1.2)
        grain = np.sin(yy / rng.uniform(9, 20) + 3 * np.sin(xx / rng.uniform(90, 200)))
        arr = wood + grain[:, :, None] * 18
    elif style == 3:
        other = rng.integers(40, 230, size=3).astype(np.float32)
        cell = int(rng.integers(40, 110))
        check = ((xx // cell + yy // cell) % 2)[:, :, None]
        arr = base * (1 - check) + other * check
    else:
        coarse = rng.normal(0, 1, size=(height // 8 + 1, width // 8 + 1)).astype(np.float32)
        blotch = np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        )
        arr = base + blotch[:, :, None] * 14
    # Vignette: phone lenses darken corners.
    r2 = ((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * 2
    arr = arr * (1 - 0.25 * r2[:, :, None])
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _perspective_coeffs(
    src: Sequence[tuple[float, float]], dst: Sequence[tuple[float, float]]
) -> list[float]:
    """Coefficients for ``Image.transform(PERSPECTIVE)`` mapping output ``dst`` to input ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs = [c for point in src for c in point]
    return [float(c) for c in np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs))]


def _tilted(obj: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The object seen from another angle: a perspective warp, then an in-plane rotation."""
    w, h = obj.size
    jitter = 0.09
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    moved = [
        (x + rng.uniform(-jitter, jitter) * w, y + rng.uniform(-jitter, jitter) * h)
        for x, y in corners
    ]
    min_x = min(x for x, _ in moved)
    min_y = min(y for _, y in moved)
    moved = [(x - min_x, y - min_y) for x, y in moved]
    size = (math.ceil(max(x for x, _ in moved)), math.ceil(max(y for _, y in moved)))
    warped = obj.transform(
        size,
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(corners, moved),
        Image.Resampling.BICUBIC,
    )
    rotated = warped.rotate(float(rng.uniform(-18, 18)), Image.Resampling.BICUBIC, expand=True)
    return rotated.crop(rotated.getbbox())


def buyer_photo(index: int, seed: int, long_side: int, aspect: float | None = None) -> Image.Image:
    """A buyer's photo of product ``index`` (upright RGB), deterministic for ``seed``.

    Other angle, scale, off-centre framing (sometimes cutting the object), a new surface,
    lighting and colour cast, sensor noise and slight blur. ``aspect`` (width / height) is
    drawn from common phone formats unless given.
    """
    rng = np.random.default_rng([_SEED, seed])
    drawn = float(rng.choice([4 / 3, 3 / 4, 1.0, 16 / 9]))
    aspect = drawn if aspect is None else aspect
    width = long_side if aspect >= 1 else round(long_side * aspect)
    height = round(width / aspect)
    canvas = _background(rng, width, height)
    obj = _tilted(render_object(index), rng)
    fill = rng.uniform(0.45, 0.85) * min(width, height) / max(obj.size)
    obj = obj.resize(
        (max(1, round(obj.width * fill)), max(1, round(obj.height * fill))),
        Image.Resampling.LANCZOS,
    )
    x = round((width - obj.width) / 2 + rng.uniform(-0.12, 0.12) * width)
    y = round((height - obj.height) / 2 + rng.uniform(-0.12, 0.12) * height)
    shadow = Image.new("L", canvas.size, 0)
    shadow.paste(
        obj.getchannel("A").point(lambda a: a * 90 // 255),
        (x + obj.width // 25, y + obj.height // 30),
    )
    canvas.paste((0, 0, 0), (0, 0), shadow.filter(ImageFilter.GaussianBlur(max(2, width // 120))))
    canvas.paste(obj, (x, y), obj)
    arr = np.asarray(canvas, dtype=np.float32)
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    gain = float(rng.uniform(0.75, 1.2))
    contrast = float(rng.uniform(0.8, 1.15))
    arr = ((arr - 128) * contrast + 128) * gain * cast
    arr += rng.normal(0, rng.uniform(1.5, 5), size=arr.shape).astype(np.float32)
    photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        photo = photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.6))))
    return ImageEnhance.Color(photo).enhance(float(rng.uniform(0.85, 1.15)))


# EXIF Orientation -> the transpose that stores upright pixels so the tag turns them back.
_STORE_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _jpeg(img: Image.Image, quality: int, orientation: int = 1) -> bytes:
    """Encode as baseline JPEG; with ``orientation`` != 1 store the pixels turned, plus the tag."""
    out = io.BytesIO()
    if orientation == 1:
        img.save(out, "JPEG", quality=quality)
    else:
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        img.transpose(_STORE_FOR_ORIENTATION[orientation]).save(
            out, "JPEG", quality=quality, exif=exif.tobytes()
        )
    return out.getvalue()


# --- the committed sample set -------------------------------------------------------------

_QUERY_COUNT = 32
_EXIF_EVERY = 4  # every fourth buyer photo is stored turned, with an Orientation tag


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_samples(root: Path, catalogue: Path) -> dict[str, int]:
    """Rebuild the sample set under ``root`` and the product catalogue in ``catalogue``;
    return the ground truth it wrote."""
    for folder in (catalogue, root / "queries", root / "awkward"):
        shutil.rmtree(folder, ignore_errors=True)
    products = build_products()
    for index, product in enumerate(products):
        _write(catalogue / product.image, _jpeg(_studio_shot(index), 88))
    (catalogue / "catalogue.json").write_text(
        json.dumps([p.to_json() for p in products], ensure_ascii=False, indent=2) + "\n",
        encoding="utf-8",
    )
    truth: dict[str, int] = {}
    rng = random.Random(_SEED + 1)
    # Every product once, then a few twice; shuffled so names do not follow catalogue order.
    subjects = list(range(len(products))) + rng.sample(
        range(len(products)), _QUERY_COUNT - len(products)
    )
    rng.shuffle(subjects)
    orientations = (6, 8, 3)
    for number, index in enumerate(subjects, start=1):
        photo = buyer_photo(index, seed=number, long_side=rng.randrange(800, 1401, 8))
        orientation = orientations[number // _EXIF_EVERY % 3] if number % _EXIF_EVERY == 0 else 1
        name = f"queries/q{number:03d}.jpg"
        _write(root / name, _jpeg(photo, rng.randrange(50, 86), orientation))
        truth[name] = products[index].offer_id
    duplicate = "queries/dup/q005-copy.jpg"
    _write(root / duplicate, (root / "queries/q005.jpg").read_bytes())
    truth[duplicate] = truth["queries/q005.jpg"]
    truth.update(_write_awkward(root / "awkward", products))
    (root / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return truth


def _write_awkward(folder: Path, products: Sequence[Product]) -> dict[str, int]:
    """Files that trip naive decoders; returns truth for those that depict a product."""
    truth: dict[str, int] = {}

    def keep(name: str, data: bytes, index: int | None) -> None:
        _write(folder / name, data)
        if index is not None:
            truth[f"awkward/{name}"] = products[index].offer_id

    # Product on a transparent background; converting straight to RGB would paint it black.
    alpha = render_object(3).rotate(8, Image.Resampling.BICUBIC, expand=True)
    keep("alpha.png", _png(alpha), 3)
    # Palette GIF whose background index is transparent.
    gif_source = render_object(10)
    opaque = gif_source.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
    palette = gif_source.convert("RGB").quantize(255, dither=Image.Dither.NONE)
    palette.paste(255, (0, 0), opaque.point(lambda a: 255 - a))
    out = io.BytesIO()
    palette.save(out, "GIF", transparency=255)
    keep("transparent.gif", out.getvalue(), 10)
    # Print-shop CMYK JPEGs, with and without an embedded profile.
    cmyk_photo = buyer_photo(13, seed=901, long_side=900)
    keep("cmyk-icc.jpg", _cmyk_jpeg(cmyk_photo, with_profile=True), 13)
    keep(
        "cmyk-plain.jpg",
        _cmyk_jpeg(buyer_photo(16, seed=902, long_side=900), with_profile=False),
        16,
    )
    # 16-bit grayscale scan: convert("RGB") would clip it to white.
    gray = np.asarray(_studio_shot(11).convert("L"), dtype=np.uint16) * 257
    keep("gray16.png", _png(Image.fromarray(gray)), 11)
    whole = _jpeg(buyer_photo(6, seed=903, long_side=1000), 80)
    keep("truncated.jpg", whole[: len(whole) // 2], None)
    keep("empty.jpg", b"", None)
    keep("not-an-image.jpg", "这不是图片 / this is not an image\n".encode(), None)
    return truth


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


# Ink coverage c prints as c ** _DOT_GAIN: a decoder ignoring the profile sees washed-out colours.
_DOT_GAIN = 0.6


def _cmyk_jpeg(img: Image.Image, *, with_profile: bool) -> bytes:
    """Encode as a CMYK JPEG with full grey-component replacement (K carries the darkness).

    With the profile the ink values follow its printing model, so the colours come out right
    only when the profile is honoured; without it they are the plain complement a decoder
    assumes when nothing says otherwise.
    """
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    k = 1.0 - rgb.max(axis=2)
    cmy = (1.0 - rgb - k[:, :, None]) / np.maximum(1.0 - k[:, :, None], 1e-6)
    cmyk = np.concatenate([cmy, k[:, :, None]], axis=2)
    if with_profile:
        cmyk **= 1.0 / _DOT_GAIN
    out = io.BytesIO()
    extra = {"icc_profile": _cmyk_profile()} if with_profile else {}
    pixels = np.round(cmyk * 255).astype(np.uint8)
    cmyk_img = Image.frombytes("CMYK", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
    cmyk_img.save(out, "JPEG", quality=80, **extra)
    return out.getvalue()


@cache
def _cmyk_profile() -> bytes:
    """A small ICC v2 output profile: CMYK -> Lab through a 7-point lut16 (``mft2``).

    It encodes the printing model the pixels were made with, R = (1 - C^g)(1 - K^g) with
    g = ``_DOT_GAIN``, so a decoder that honours the profile sees the intended colours.
    """
    grid = 7
    steps = np.linspace(0.0, 1.0, grid) ** _DOT_GAIN
    c, m, y, k = np.meshgrid(steps, steps, steps, steps, indexing="ij")
    rgb = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=-1).reshape(
        -1, 3
    )
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    srgb_to_xyz_d50 = np.array(
        [
            [0.4360747, 0.3850649, 0.1430804],
            [0.2225045, 0.7168786, 0.0606169],
            [0.0139322, 0.0971045, 0.7141733],
        ]
    )
    white = np.array([0.9642, 1.0, 0.8249])
    xyz = linear @ srgb_to_xyz_d50.T / white
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1
    )
    # ICC v2 16-bit Lab encoding: L* 0..100 -> 0..0xFF00, a*/b* -128..127.996 -> 0..0xFFFF.
    encoded = np.stack(
        [lab[:, 0] * 0xFF00 / 100, (lab[:, 1] + 128) * 256, (lab[:, 2] + 128) * 256], axis=1
    )
    clut = np.clip(np.round(encoded), 0, 0xFFFF).astype(">u2").tobytes()
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536)
    ramp = struct.pack(">2H", 0, 0xFFFF)
    a2b0 = b"mft2\0\0\0\0" + struct.pack(">4B", 4, 3, grid, 0) + identity + struct.pack(">2H", 2, 2)
    a2b0 += ramp * 4 + clut + ramp * 3

    def xyz_tag(values: Sequence[float]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in values)

    text = b"img1688 synthetic CMYK"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0"
    desc += struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz_tag((0.9642, 1.0, 0.8249))),
        (b"cprt", b"text\0\0\0\0No copyright, use freely\0"),
        (b"A2B0", a2b0),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += padded
    size = offset + len(body)
    header = struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
    header += struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 4 + struct.pack(">I", 0)
    header += b"\0" * 16 + struct.pack(">I", 0) + xyz_tag((0.9642, 1.0, 0.8249))[8:] + b"\0" * 48
    return header + struct.pack(">I", len(tags)) + table + body


# --- benchmark corpus ---------------------------------------------------------------------

_LARGE = (4240, 2832)  # 12 megapixels, 3:2, a common phone sensor


def write_corpus(folder: Path, count: int, *, large: bool = False, progress: bool = True) -> None:
    """Stream ``count`` buyer photos of catalogue products into ``folder``, one at a time.

    ``large`` makes 12-megapixel photos for preprocessing benchmarks. File names carry no
    product information; ``folder/truth.json`` maps each name to its offer id.
    """
    folder.mkdir(parents=True, exist_ok=True)
    products = build_products()
    truth: dict[str, int] = {}
    step = max(1, count // 10)
    for number in range(count):
        index = (number * 7 + number // len(products)) % len(products)
        name = f"img{number:06d}.jpg"
        seed = 10_000 + number
        if large:
            photo = buyer_photo(index, seed, 1400, aspect=_LARGE[0] / _LARGE[1])
            data = _jpeg(_enlarged(photo, _LARGE, seed), 88)
        else:
            data = _jpeg(
                buyer_photo(index, seed, 800 + 48 * (number % 13)),
                60 + number % 30,
                6 if number % 9 == 0 else 1,
            )
        (folder / name).write_bytes(data)
        truth[name] = products[index].offer_id
        if progress and ((number + 1) % step == 0 or number + 1 == count):
            print(f"corpus: {number + 1}/{count}", file=sys.stderr)
    (folder / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")


def _enlarged(photo: Image.Image, size: tuple[int, int], seed: int) -> Image.Image:
    """Upscale to ``size`` and add sensor grain strip by strip, keeping memory flat."""
    big = photo.resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng([_SEED, seed])
    grain = rng.normal(0, 4, size=(256, 256, 3)).astype(np.float32)
    strip = 256
    for top in range(0, big.height, strip):
        box = (0, top, big.width, min(big.height, top + strip))
        arr = np.asarray(big.crop(box), dtype=np.float32)
        reps = (1, math.ceil(arr.shape[1] / 256), 1)
        arr += np.tile(grain[: arr.shape[0]], reps)[:, : arr.shape[1]]
        big.paste(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), box[:2])
    return big


def write_large(path: Path, side: int = 6000) -> None:
    """Write one 3:2 buyer photo of ``side`` pixels on its long side as JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photo = buyer_photo(0, 77, 1400, aspect=1.5)
    path.write_bytes(_jpeg(_enlarged(photo, (side, round(side / 1.5)), 77), 85))


# --- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.samplegen {samples,corpus,large} ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.samplegen", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    samples = commands.add_parser("samples", help="rebuild the committed sample set")
    samples.add_argument("directory", type=Path)
    samples.add_argument(
        "--catalogue",
        type=Path,
        default=DEFAULT_CATALOGUE,
        help="where the product catalogue goes (default: the sandbox's, %(default)s)",
    )
    corpus = commands.add_parser("corpus", help="write a benchmark corpus of buyer photos")
    corpus.add_argument("directory", type=Path)
    corpus.add_argument("--count", type=int, required=True)
    corpus.add_argument("--large", action="store_true", help="12-megapixel photos")
    large = commands.add_parser("large", help="write one very large photo")
    large.add_argument("file", type=Path)
    large.add_argument("--side", type=int, default=6000)
    args = parser.parse_args(argv)
    if args.command == "samples":
        truth = write_samples(args.directory, args.catalogue)
        print(
            f"wrote {len(PRODUCT_SPECS)} products to {args.catalogue}, "
            f"{len(truth)} labelled images to {args.directory}"
        )
    elif args.command == "corpus":
        if args.count < 1:
            parser.error("--count must be at least 1")
        write_corpus(args.directory, args.count, large=args.large)
    else:
        if args.side < 16:
            parser.error("--side must be at least 16")
        write_large(args.file, args.side)
        print(f"wrote {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
