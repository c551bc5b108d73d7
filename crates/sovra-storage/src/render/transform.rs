//! What an image transformation asks for, and doing it: the options of
//! `/render/image/…` (query, signed token, `createSignedUrl` body), the
//! geometry of Supabase Storage's resize modes, and decode → orient →
//! resize → encode on bytes in memory. No IO here; the caller runs
//! [`render`] on a blocking thread.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use serde_json::Value;

/// Quality when none is asked for (Supabase Storage's default).
pub const DEFAULT_QUALITY: u8 = 80;

/// How the image is fitted into `width` x `height` (Storage's names; the
/// imgproxy resizing types Storage maps them to are in
/// [`Resize::imgproxy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resize {
    /// Keep the aspect ratio, fill the box, crop what sticks out (centred).
    #[default]
    Cover,
    /// Keep the aspect ratio, fit inside the box.
    Contain,
    /// Stretch to the box.
    Fill,
}

impl Resize {
    fn parse(text: &str) -> Option<Resize> {
        match text {
            "cover" => Some(Resize::Cover),
            "contain" => Some(Resize::Contain),
            "fill" => Some(Resize::Fill),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resize::Cover => "cover",
            Resize::Contain => "contain",
            Resize::Fill => "fill",
        }
    }

    /// The imgproxy resizing type Storage sends for this mode (shown in
    /// `X-Transformations`).
    fn imgproxy(self) -> &'static str {
        match self {
            Resize::Cover => "fill",
            Resize::Contain => "fit",
            Resize::Fill => "force",
        }
    }
}

/// The output format asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Not given: WebP when the client accepts it (see [`output_format`]).
    #[default]
    Auto,
    /// The source's own format.
    Origin,
    Webp,
    /// Asked for, but no pure-Rust AVIF encoder is built in: served as WebP.
    Avif,
}

impl Format {
    fn parse(text: &str) -> Option<Format> {
        match text {
            "origin" => Some(Format::Origin),
            "webp" => Some(Format::Webp),
            "avif" => Some(Format::Avif),
            _ => None,
        }
    }

    fn name(self) -> Option<&'static str> {
        match self {
            Format::Auto => None,
            Format::Origin => Some("origin"),
            Format::Webp => Some("webp"),
            Format::Avif => Some("avif"),
        }
    }
}

/// One transformation, with sizes already clamped to the configured
/// bounds (as Storage clamps them).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Transform {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub resize: Resize,
    /// Whether `resize` was given (a signed token records `undefined`
    /// otherwise, as Storage's does).
    pub resize_given: bool,
    pub quality: Option<u8>,
    pub format: Format,
}

/// Where an option came from, for the messages of refusals (Storage's
/// schema validation names `querystring/width` or `body/transform/width`).
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Query,
    Body,
}

impl Source {
    fn prefix(self) -> &'static str {
        match self {
            Source::Query => "querystring",
            Source::Body => "body/transform",
        }
    }
}

/// A refused option, with a message in the shape of Storage's schema
/// validation (`querystring/quality must be <= 100`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError(pub String);

fn integer(source: Source, name: &str, value: &Value) -> Result<i64, OptionError> {
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        // An empty value is 0, as Storage's schema coerces it.
        Value::String(s) if s.trim().is_empty() => Some(0),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| OptionError(format!("{}/{name} must be integer", source.prefix())))
}

impl Transform {
    /// Reads the options (`width`, `height`, `resize`, `quality`,
    /// `format`) from name/value pairs; other names are ignored. Sizes of
    /// 0 mean "not given"; larger ones are clamped to `1..=max_dimension`.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Value)>,
        source: Source,
        max_dimension: u32,
    ) -> Result<Transform, OptionError> {
        let mut transform = Transform::default();
        let prefix = source.prefix();
        for (name, value) in pairs {
            match name {
                "width" | "height" => {
                    let n = integer(source, name, &value)?;
                    if n < 0 {
                        return Err(OptionError(format!("{prefix}/{name} must be >= 0")));
                    }
                    let size = (n > 0).then(|| {
                        u32::try_from(n)
                            .unwrap_or(u32::MAX)
                            .clamp(1, max_dimension.max(1))
                    });
                    if name == "width" {
                        transform.width = size;
                    } else {
                        transform.height = size;
                    }
                }
                "resize" => {
                    let text = value.as_str().unwrap_or_default();
                    transform.resize = Resize::parse(text).ok_or_else(|| {
                        OptionError(format!(
                            "{prefix}/resize must be equal to one of the allowed values"
                        ))
                    })?;
                    transform.resize_given = true;
                }
                "quality" => {
                    let n = integer(source, name, &value)?;
                    if n < 20 {
                        return Err(OptionError(format!("{prefix}/quality must be >= 20")));
                    }
                    if n > 100 {
                        return Err(OptionError(format!("{prefix}/quality must be <= 100")));
                    }
                    transform.quality = u8::try_from(n).ok();
                }
                "format" => {
                    let text = value.as_str().unwrap_or_default();
                    transform.format = Format::parse(text).ok_or_else(|| {
                        OptionError(format!(
                            "{prefix}/format must be equal to one of the allowed values"
                        ))
                    })?;
                }
                _ => {}
            }
        }
        Ok(transform)
    }

    /// Whether anything is asked for at all.
    pub fn is_empty(&self) -> bool {
        *self == Transform::default()
    }

    /// The `transformations` claim of a signed URL, as Storage writes it
    /// (`height:100,width:200,resize:cover,quality:70,format:webp`; the
    /// resize mode is `undefined` when it was not given; `origin` is not
    /// written here but in the token's `format` claim).
    pub fn to_signed(&self) -> String {
        let mut segments = Vec::new();
        if let Some(h) = self.height {
            segments.push(format!("height:{h}"));
        }
        if let Some(w) = self.width {
            segments.push(format!("width:{w}"));
        }
        if self.width.is_some() || self.height.is_some() {
            let resize = if self.resize_given {
                self.resize.name()
            } else {
                "undefined"
            };
            segments.push(format!("resize:{resize}"));
        }
        if let Some(q) = self.quality {
            segments.push(format!("quality:{q}"));
        }
        if let Some(f) = self.format.name().filter(|f| *f != "origin") {
            segments.push(format!("format:{f}"));
        }
        segments.join(",")
    }

    /// Reads a signed URL's `transformations` claim (and its `format`
    /// claim) leniently, as Storage does: unknown segments are skipped, an
    /// unknown resize mode is `cover`, sizes are clamped again.
    pub fn from_signed(transformations: &str, format: Option<&str>, max_dimension: u32) -> Self {
        let mut transform = Transform::default();
        let size = |value: &str| {
            leading_int(value).filter(|n| *n > 0).map(|n| {
                u32::try_from(n)
                    .unwrap_or(u32::MAX)
                    .clamp(1, max_dimension.max(1))
            })
        };
        for segment in transformations.split(',') {
            let (name, value) = segment.split_once(':').unwrap_or((segment, ""));
            match name {
                "width" => transform.width = size(value),
                "height" => transform.height = size(value),
                "resize" => {
                    if let Some(resize) = Resize::parse(value) {
                        transform.resize = resize;
                        transform.resize_given = true;
                    }
                }
                "quality" => {
                    transform.quality = leading_int(value)
                        .map(|q| u8::try_from(q.clamp(20, 100)).unwrap_or(DEFAULT_QUALITY));
                }
                "format" => transform.format = Format::parse(value).unwrap_or_default(),
                _ => {}
            }
        }
        if format == Some("origin") {
            transform.format = Format::Origin;
        }
        transform
    }

    /// The transformation as imgproxy segments, for `X-Transformations`
    /// (what Storage sends there).
    pub fn header(&self) -> String {
        let mut segments = Vec::new();
        if let Some(h) = self.height {
            segments.push(format!("height:{h}"));
        }
        if let Some(w) = self.width {
            segments.push(format!("width:{w}"));
        }
        if self.width.is_some() || self.height.is_some() {
            segments.push(format!("resizing_type:{}", self.resize.imgproxy()));
        }
        if let Some(q) = self.quality {
            segments.push(format!("quality:{q}"));
        }
        if let Some(f) = self.format.name().filter(|f| *f != "origin") {
            segments.push(format!("format:{f}"));
        }
        segments.join(",")
    }

    /// A canonical text of what determines the output, for cache keys.
    pub fn cache_text(&self) -> String {
        format!(
            "w={:?};h={:?};r={};q={};f={:?}",
            self.width,
            self.height,
            self.resize.name(),
            self.quality.unwrap_or(DEFAULT_QUALITY),
            self.format
        )
    }
}

/// JavaScript's `parseInt` on the leading digits.
fn leading_int(text: &str) -> Option<i64> {
    let text = text.trim_start();
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let digits: String = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .take(12)
        .collect();
    digits.parse::<i64>().ok().map(|n| sign * n)
}

/// Whether an `Accept` header lets the answer be WebP.
pub fn accepts_webp(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|part| {
            let mut fields = part.split(';');
            let media = fields.next().unwrap_or("").trim();
            let refused = fields.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("image/webp") && !refused
        })
    })
}

/// An encoded output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl Output {
    pub fn mime(self) -> &'static str {
        match self {
            Output::Jpeg => "image/jpeg",
            Output::Png => "image/png",
            Output::Webp => "image/webp",
            Output::Gif => "image/gif",
        }
    }

    /// The file extension a cached rendering is kept under.
    pub fn extension(self) -> &'static str {
        match self {
            Output::Jpeg => "jpg",
            Output::Png => "png",
            Output::Webp => "webp",
            Output::Gif => "gif",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Output> {
        match ext {
            "jpg" => Some(Output::Jpeg),
            "png" => Some(Output::Png),
            "webp" => Some(Output::Webp),
            "gif" => Some(Output::Gif),
            _ => None,
        }
    }

    fn of_source(format: ImageFormat) -> Option<Output> {
        match format {
            ImageFormat::Jpeg => Some(Output::Jpeg),
            ImageFormat::Png => Some(Output::Png),
            ImageFormat::WebP => Some(Output::Webp),
            ImageFormat::Gif => Some(Output::Gif),
            _ => None,
        }
    }
}

/// The format of the answer. `origin` keeps the source's; `webp` (and
/// `avif`, which is not built in) give WebP. Without a format, WebP is
/// sent when the client accepts it, except for JPEG sources: the WebP
/// encoder is lossless only, and a lossless WebP of a photograph is
/// larger than the JPEG it came from, which defeats the point of the
/// conversion.
pub fn output_format(source: Output, format: Format, accepts_webp: bool) -> Output {
    match format {
        Format::Origin => source,
        Format::Webp | Format::Avif => Output::Webp,
        Format::Auto if accepts_webp && source != Output::Jpeg => Output::Webp,
        Format::Auto => source,
    }
}

/// What to do with a decoded image: scale to `scale`, then keep the
/// centred `crop` of that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub scale: (u32, u32),
    pub crop: Option<(u32, u32)>,
}

fn scaled(size: u32, factor: f64) -> u32 {
    let value = (f64::from(size) * factor).round();
    if value < 1.0 {
        1
    } else if value > f64::from(u32::MAX) {
        u32::MAX
    } else {
        value as u32
    }
}

/// The geometry of a resize, as imgproxy does it for Storage (which never
/// enlarges: `enlarge` is off). With one side given, the other follows
/// the aspect ratio, whatever the mode. With both: `cover` scales to fill
/// the box and crops the centre; `contain` scales to fit inside it;
/// `fill` stretches to it. An image smaller than the box is not scaled
/// up: `cover` then crops what it can, and `fill` keeps the box's aspect
/// ratio at the largest size the source allows.
pub fn plan(source: (u32, u32), width: Option<u32>, height: Option<u32>, resize: Resize) -> Plan {
    let (sw, sh) = (f64::from(source.0.max(1)), f64::from(source.1.max(1)));
    let whole = |factor: f64| (scaled(source.0, factor), scaled(source.1, factor));
    match (width, height) {
        (None, None) => Plan {
            scale: source,
            crop: None,
        },
        (Some(w), None) => Plan {
            scale: whole((f64::from(w) / sw).min(1.0)),
            crop: None,
        },
        (None, Some(h)) => Plan {
            scale: whole((f64::from(h) / sh).min(1.0)),
            crop: None,
        },
        (Some(w), Some(h)) => {
            let (fx, fy) = (f64::from(w) / sw, f64::from(h) / sh);
            match resize {
                Resize::Contain => Plan {
                    scale: whole(fx.min(fy).min(1.0)),
                    crop: None,
                },
                Resize::Cover => {
                    let scale = whole(fx.max(fy).min(1.0));
                    let crop = (w.min(scale.0), h.min(scale.1));
                    Plan {
                        scale,
                        crop: (crop != scale).then_some(crop),
                    }
                }
                Resize::Fill => {
                    let (mut fx, mut fy) = (fx, fy);
                    if fx > 1.0 {
                        fy /= fx;
                        fx = 1.0;
                    }
                    if fy > 1.0 {
                        fx /= fy;
                        fy = 1.0;
                    }
                    Plan {
                        scale: (scaled(source.0, fx), scaled(source.1, fy)),
                        crop: None,
                    }
                }
            }
        }
    }
}

/// Bounds of one rendering.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most pixels (width x height) a source may declare.
    pub max_pixels: u64,
}

/// Why an image could not be rendered.
#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// Not a JPEG, PNG, WebP or GIF.
    Unsupported,
    /// The declared dimensions exceed [`Limits::max_pixels`].
    TooManyPixels,
    /// Corrupt or truncated data.
    Invalid(String),
}

/// The rendered bytes and their format.
#[derive(Debug)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub format: Output,
    pub width: u32,
    pub height: u32,
}

fn invalid(err: impl std::fmt::Display) -> RenderError {
    RenderError::Invalid(err.to_string())
}

/// Decodes `source`, applies its orientation (EXIF), resizes and encodes
/// it. The declared dimensions are checked against `limits` from the
/// header, before any pixel buffer exists, and the decoders are held to
/// an allocation limit besides: a small file that claims a huge image is
/// refused without decoding.
pub fn render(
    source: &[u8],
    transform: &Transform,
    accepts_webp: bool,
    limits: Limits,
) -> Result<Rendered, RenderError> {
    let format = image::guess_format(source).map_err(|_| RenderError::Unsupported)?;
    let source_format = Output::of_source(format).ok_or(RenderError::Unsupported)?;
    let mut reader = ImageReader::with_format(Cursor::new(source), format);
    let mut decoder_limits = image::Limits::default();
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    decoder_limits.max_image_width = Some(side);
    decoder_limits.max_image_height = Some(side);
    // 16-bit RGBA is the widest pixel these decoders produce.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|err| match err {
        image::ImageError::Limits(_) => RenderError::TooManyPixels,
        image::ImageError::Unsupported(_) => RenderError::Unsupported,
        err => invalid(err),
    })?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(RenderError::Invalid("the image has no pixels".to_owned()));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(RenderError::TooManyPixels);
    }
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder).map_err(|err| match err {
        image::ImageError::Limits(_) => RenderError::TooManyPixels,
        err => invalid(err),
    })?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    let plan = plan(
        (image.width(), image.height()),
        transform.width,
        transform.height,
        transform.resize,
    );
    // A large reduction first averages boxes down to twice the target
    // (cheap), so that the Lanczos filter below works on few pixels.
    if image.width() / 4 > plan.scale.0 && image.height() / 4 > plan.scale.1 {
        image = image.thumbnail_exact(plan.scale.0 * 2, plan.scale.1 * 2);
    }
    if plan.scale != (image.width(), image.height()) {
        image = image.resize_exact(
            plan.scale.0,
            plan.scale.1,
            image::imageops::FilterType::Lanczos3,
        );
    }
    if let Some((cw, ch)) = plan.crop {
        let x = (image.width() - cw) / 2;
        let y = (image.height() - ch) / 2;
        image = image.crop_imm(x, y, cw, ch);
    }
    let output = output_format(source_format, transform.format, accepts_webp);
    let bytes = encode(&image, output, transform.quality.unwrap_or(DEFAULT_QUALITY))?;
    Ok(Rendered {
        bytes,
        format: output,
        width: image.width(),
        height: image.height(),
    })
}

fn encode(image: &DynamicImage, output: Output, quality: u8) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    match output {
        Output::Jpeg => {
            let rgb = image.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode_image(&rgb)
                .map_err(invalid)?;
        }
        Output::Png => {
            let encoder = image::codecs::png::PngEncoder::new(&mut out);
            match image {
                DynamicImage::ImageLuma8(_)
                | DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageRgb8(_)
                | DynamicImage::ImageRgba8(_)
                | DynamicImage::ImageLuma16(_)
                | DynamicImage::ImageLumaA16(_)
                | DynamicImage::ImageRgb16(_)
                | DynamicImage::ImageRgba16(_) => image.write_with_encoder(encoder),
                other => DynamicImage::ImageRgba8(other.to_rgba8()).write_with_encoder(encoder),
            }
            .map_err(invalid)?;
        }
        Output::Webp => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            let image = if image.color().has_alpha() {
                DynamicImage::ImageRgba8(image.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(image.to_rgb8())
            };
            image.write_with_encoder(encoder).map_err(invalid)?;
        }
        Output::Gif => {
            // Speed 10 of 30: the default (1) quantises large frames slowly.
            let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
            encoder
                .encode_frame(image::Frame::new(image.to_rgba8()))
                .map_err(invalid)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(pairs: &[(&'static str, &'static str)]) -> Result<Transform, OptionError> {
        Transform::from_pairs(
            pairs.iter().map(|(k, v)| (*k, json!(v))),
            Source::Query,
            2500,
        )
    }

    #[test]
    fn options_parse_clamp_and_refuse_as_storage() {
        let t = query(&[("width", "100"), ("height", "0"), ("resize", "contain")]).unwrap();
        assert_eq!(t.width, Some(100));
        assert_eq!(t.height, None);
        assert_eq!(t.resize, Resize::Contain);
        assert_eq!(query(&[("width", "9000")]).unwrap().width, Some(2500));
        assert_eq!(query(&[("width", "")]).unwrap().width, None);
        assert_eq!(
            query(&[("width", "-1")]).unwrap_err().0,
            "querystring/width must be >= 0"
        );
        assert_eq!(
            query(&[("width", "wide")]).unwrap_err().0,
            "querystring/width must be integer"
        );
        assert_eq!(
            query(&[("quality", "19")]).unwrap_err().0,
            "querystring/quality must be >= 20"
        );
        assert_eq!(
            query(&[("quality", "101")]).unwrap_err().0,
            "querystring/quality must be <= 100"
        );
        assert!(query(&[("resize", "stretch")]).is_err());
        assert!(query(&[("format", "bmp")]).is_err());
        assert_eq!(query(&[("format", "avif")]).unwrap().format, Format::Avif);
        assert!(query(&[("download", "x")]).unwrap().is_empty());
        let body = Transform::from_pairs(
            [("width", json!(120)), ("quality", json!(10))],
            Source::Body,
            2500,
        );
        assert_eq!(body.unwrap_err().0, "body/transform/quality must be >= 20");
    }

    #[test]
    fn signed_text_round_trips_as_storage_writes_it() {
        let t = query(&[
            ("width", "200"),
            ("height", "100"),
            ("quality", "70"),
            ("format", "webp"),
        ])
        .unwrap();
        assert_eq!(
            t.to_signed(),
            "height:100,width:200,resize:undefined,quality:70,format:webp"
        );
        let back = Transform::from_signed(&t.to_signed(), Some("webp"), 2500);
        assert_eq!(back.width, Some(200));
        assert_eq!(back.height, Some(100));
        assert_eq!(back.resize, Resize::Cover);
        assert_eq!(back.quality, Some(70));
        assert_eq!(back.format, Format::Webp);
        let origin = Transform::from_signed("width:50,resize:fill", Some("origin"), 2500);
        assert_eq!(origin.resize, Resize::Fill);
        assert_eq!(origin.format, Format::Origin);
        // Lenient: junk is skipped, sizes clamped.
        let junk = Transform::from_signed("width:99999,bogus,height:abc", None, 2500);
        assert_eq!((junk.width, junk.height), (Some(2500), None));
        assert_eq!(
            t.header(),
            "height:100,width:200,resizing_type:fill,quality:70,format:webp"
        );
    }

    #[test]
    fn geometry_of_each_mode() {
        let src = (400, 300);
        // One side: the other follows the aspect ratio.
        assert_eq!(plan(src, Some(100), None, Resize::Fill).scale, (100, 75));
        assert_eq!(plan(src, None, Some(150), Resize::Cover).scale, (200, 150));
        // cover: fill the box, crop the centre.
        let cover = plan(src, Some(100), Some(100), Resize::Cover);
        assert_eq!((cover.scale, cover.crop), ((133, 100), Some((100, 100))));
        // contain: fit inside.
        assert_eq!(
            plan(src, Some(100), Some(100), Resize::Contain).scale,
            (100, 75)
        );
        // fill: stretch.
        assert_eq!(
            plan(src, Some(100), Some(50), Resize::Fill).scale,
            (100, 50)
        );
        // Never enlarged.
        assert_eq!(plan(src, Some(800), None, Resize::Cover).scale, (400, 300));
        let big = plan(src, Some(800), Some(100), Resize::Cover);
        assert_eq!((big.scale, big.crop), ((400, 300), Some((400, 100))));
        assert_eq!(
            plan(src, Some(800), Some(800), Resize::Contain).scale,
            (400, 300)
        );
        assert_eq!(
            plan(src, Some(800), Some(200), Resize::Fill).scale,
            (400, 100)
        );
        // Tiny results keep at least one pixel.
        assert_eq!(plan((4000, 10), Some(1), None, Resize::Cover).scale, (1, 1));
    }

    #[test]
    fn accept_and_output_format() {
        assert!(accepts_webp(Some("image/avif,image/webp,*/*")));
        assert!(!accepts_webp(Some("image/png,*/*")));
        assert!(!accepts_webp(Some("image/webp;q=0")));
        assert!(!accepts_webp(None));
        assert_eq!(output_format(Output::Png, Format::Auto, true), Output::Webp);
        assert_eq!(output_format(Output::Png, Format::Auto, false), Output::Png);
        assert_eq!(
            output_format(Output::Jpeg, Format::Auto, true),
            Output::Jpeg
        );
        assert_eq!(
            output_format(Output::Png, Format::Origin, true),
            Output::Png
        );
        assert_eq!(
            output_format(Output::Jpeg, Format::Webp, false),
            Output::Webp
        );
        assert_eq!(
            output_format(Output::Jpeg, Format::Avif, false),
            Output::Webp
        );
    }

    /// Cases per fuzz target: `SOVRA_FUZZ_CASES` (default 256).
    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config::with_cases(
            std::env::var("SOVRA_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
        )
    }

    fn mode() -> impl proptest::strategy::Strategy<Value = Resize> {
        proptest::prop_oneof![
            proptest::strategy::Just(Resize::Cover),
            proptest::strategy::Just(Resize::Contain),
            proptest::strategy::Just(Resize::Fill),
        ]
    }

    proptest::proptest! {
        #![proptest_config(fuzz_config())]

        /// Options from anywhere never panic, and what they give stays in
        /// bounds.
        #[test]
        fn fuzz_options(text in ".{0,80}", value in ".{0,12}", number in proptest::num::i64::ANY) {
            let t = Transform::from_signed(&text, Some(&value), 2500);
            proptest::prop_assert!(t.width.is_none_or(|w| (1..=2500).contains(&w)));
            proptest::prop_assert!(t.quality.is_none_or(|q| (20..=100).contains(&q)));
            for name in ["width", "height", "quality", "resize", "format"] {
                for v in [json!(value.clone()), json!(number)] {
                    if let Ok(t) = Transform::from_pairs([(name, v)], Source::Query, 2500) {
                        proptest::prop_assert!(t.height.is_none_or(|h| (1..=2500).contains(&h)));
                        let back = Transform::from_signed(&t.to_signed(), None, 2500);
                        proptest::prop_assert_eq!((back.width, back.height, back.quality), (t.width, t.height, t.quality));
                    }
                }
            }
        }

        /// Every plan has at least one pixel, never enlarges the source and
        /// never exceeds a side that was asked for.
        #[test]
        fn fuzz_plan(sw in 1u32..20_000, sh in 1u32..20_000,
                     w in proptest::option::of(1u32..3000), h in proptest::option::of(1u32..3000),
                     resize in mode()) {
            let p = plan((sw, sh), w, h, resize);
            let out = p.crop.unwrap_or(p.scale);
            proptest::prop_assert!(out.0 >= 1 && out.1 >= 1);
            proptest::prop_assert!(out.0 <= sw && out.1 <= sh, "{:?} from {:?}", out, (sw, sh));
            if let Some(crop) = p.crop {
                proptest::prop_assert!(crop.0 <= p.scale.0 && crop.1 <= p.scale.1);
            }
            match (w, h) {
                (Some(w), None) => proptest::prop_assert!(out.0 <= w),
                (None, Some(h)) => proptest::prop_assert!(out.1 <= h),
                _ => {}
            }
            if let (Some(w), Some(h)) = (w, h) {
                proptest::prop_assert!(out.0 <= w && out.1 <= h, "{:?} for {:?} {:?}", out, (w, h), resize);
            }
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn renders_and_refuses() {
        let limits = Limits {
            max_pixels: 1_000_000,
        };
        let t = Transform {
            width: Some(40),
            height: Some(40),
            ..Transform::default()
        };
        // A large reduction (box pre-shrink, then Lanczos) lands exactly.
        let small = Transform {
            width: Some(30),
            ..Transform::default()
        };
        let out = render(&png(600, 400), &small, false, limits).unwrap();
        assert_eq!((out.width, out.height), (30, 20));
        let out = render(&png(80, 60), &t, false, limits).unwrap();
        assert_eq!((out.format, out.width, out.height), (Output::Png, 40, 40));
        let decoded = image::load_from_memory(&out.bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (40, 40));
        let webp = render(&png(80, 60), &t, true, limits).unwrap();
        assert_eq!(webp.format, Output::Webp);
        assert_eq!(image::guess_format(&webp.bytes).unwrap(), ImageFormat::WebP);
        assert_eq!(
            render(b"hello, world", &t, false, limits).unwrap_err(),
            RenderError::Unsupported
        );
        assert_eq!(
            render(&png(1100, 1000), &t, false, limits).unwrap_err(),
            RenderError::TooManyPixels
        );
        let truncated = &png(80, 60)[..60];
        assert!(matches!(
            render(truncated, &t, false, limits),
            Err(RenderError::Invalid(_))
        ));
    }
}
