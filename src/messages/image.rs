//! Image parts: OpenAI's published tile formula.
//!
//! `detail: "low"` costs the model's base tokens. `"high"` first scales the
//! image to fit a 2048 x 2048 square, then scales it down so that its shortest
//! side is 768 px, counts the 512 px tiles that cover it and charges
//! `base + tile * tiles` (GPT-4o: 85 + 170 per tile; a 1024 x 1024 image costs
//! 765, a 2048 x 4096 one 1105). Images are only ever scaled down, never up.
//! `"auto"` is costed as `"high"` (the API picks high for all but tiny images,
//! so this errs on the side of over-counting). With no width and height given,
//! a high/auto image is charged the most any size can cost: 8 tiles (an image
//! whose shorter side ends at 768 px and longer side at 2048 px).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    Low,
    High,
    Auto,
}

impl Detail {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Detail::Low),
            "high" => Some(Detail::High),
            "auto" => Some(Detail::Auto),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub detail: Detail,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// The per-model constants of the tile formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRates {
    pub base: u64,
    pub tile: u64,
}

/// The most tiles a high-detail image can need (see the module docs).
pub const MAX_TILES: u64 = 8;

/// Number of 512 px tiles for an image of `width` x `height` in high detail.
pub fn tiles(width: u32, height: u32) -> u64 {
    if width == 0 || height == 0 {
        return 0;
    }
    let (mut w, mut h) = (f64::from(width), f64::from(height));
    let longest = w.max(h);
    if longest > 2048.0 {
        let s = 2048.0 / longest;
        w = (w * s).floor().max(1.0);
        h = (h * s).floor().max(1.0);
    }
    let shortest = w.min(h);
    if shortest > 768.0 {
        let s = 768.0 / shortest;
        w = (w * s).floor().max(1.0);
        h = (h * s).floor().max(1.0);
    }
    let tw = (w / 512.0).ceil() as u64;
    let th = (h / 512.0).ceil() as u64;
    tw * th
}

/// Tokens charged for one image part.
pub fn image_tokens(img: &Image, rates: ImageRates) -> u64 {
    match img.detail {
        Detail::Low => rates.base,
        Detail::High | Detail::Auto => {
            let n = match (img.width, img.height) {
                (Some(w), Some(h)) => tiles(w, h),
                _ => MAX_TILES,
            };
            rates.base + rates.tile * n
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GPT4O: ImageRates = ImageRates {
        base: 85,
        tile: 170,
    };

    fn high(w: u32, h: u32) -> u64 {
        image_tokens(
            &Image {
                detail: Detail::High,
                width: Some(w),
                height: Some(h),
            },
            GPT4O,
        )
    }

    #[test]
    fn openai_documented_examples() {
        assert_eq!(high(1024, 1024), 765);
        assert_eq!(high(2048, 4096), 1105);
        let low = Image {
            detail: Detail::Low,
            width: Some(4096),
            height: Some(8192),
        };
        assert_eq!(image_tokens(&low, GPT4O), 85);
    }

    #[test]
    fn small_images_are_not_upscaled() {
        assert_eq!(high(512, 512), 85 + 170);
        assert_eq!(high(100, 40), 85 + 170);
        assert_eq!(high(513, 512), 85 + 2 * 170);
    }

    #[test]
    fn unknown_size_is_the_upper_bound() {
        let unknown = Image {
            detail: Detail::Auto,
            width: None,
            height: None,
        };
        assert_eq!(image_tokens(&unknown, GPT4O), 85 + 8 * 170);
        for (w, h) in [
            (1, 1),
            (768, 2048),
            (5000, 100),
            (4096, 4096),
            (3000, 1200),
            (767, 2047),
        ] {
            assert!(tiles(w, h) <= MAX_TILES, "{w}x{h}");
        }
    }
}
