//! A bitmap backend whose text keeps each glyph's left side bearing. plotters 0.3.7 draws
//! every glyph at the start of its advance, so narrow glyphs slide left into their neighbour:
//! the prime of f′(z) landed on the f and the legend read f(z). Everything but text is the
//! wrapped backend's own drawing.
use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind, FontStyle,
};

/// `B` with text drawn glyph by glyph at their true positions (DejaVu Sans, as registered).
pub struct Glyphs<B> {
    inner: B,
    regular: FontRef<'static>,
    bold: FontRef<'static>,
}

impl<B> Glyphs<B> {
    /// None only if the compiled-in fonts were malformed.
    pub fn new(inner: B) -> Option<Self> {
        Some(Glyphs {
            inner,
            regular: FontRef::try_from_slice(dejavu::sans::regular()).ok()?,
            bold: FontRef::try_from_slice(dejavu::sans::bold()).ok()?,
        })
    }
}

impl<B: DrawingBackend> DrawingBackend for Glyphs<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (iw, ih): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.inner.blit_bitmap(pos, (iw, ih), src)
    }

    /// The same layout box and anchoring as plotters' (so charts keep their measured
    /// margins), with each glyph's outline placed at its advance plus its left side bearing.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let layout = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let ((min_x, min_y), (max_x, max_y)) = layout;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        let size = style.size() as f32;
        let face = match style.style() {
            FontStyle::Bold => &self.bold,
            _ => &self.regular,
        };
        let font = face.as_scaled(size);
        let mut pen = 0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                pen += font.kern(p, id);
            }
            prev = Some(id);
            if let Some(g) = font.outline_glyph(id.with_scale(size)) {
                let r = g.px_bounds();
                let (gx, gy) = ((pen + r.min.x) as i32, (size / 2.0 + r.min.y) as i32);
                let mut px = Vec::new();
                g.draw(|x, y, a| px.push((x as i32 + gx, y as i32 + gy, a)));
                for (x, y, a) in px {
                    let (x, y) = trans.transform(x + dx - min_x, y + dy - min_y);
                    let (x, y) = (pos.0 + x, pos.1 + y);
                    if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                        let c = BackendColor {
                            alpha: color.alpha * a as f64,
                            rgb: color.rgb,
                        };
                        self.inner.draw_pixel((x, y), c)?;
                    }
                }
            }
            pen += font.h_advance(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns holding ink of `text` drawn at (0, 0), size 40, black on white.
    fn ink_columns(text: &str) -> Vec<usize> {
        super::super::ensure_fonts();
        let (w, h) = (200u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = Glyphs::new(BitMapBackend::with_buffer(&mut buf, (w, h)))
                .unwrap()
                .into_drawing_area();
            root.draw_text(
                text,
                &(super::super::FONT, 40).into_font().color(&BLACK),
                (0, 0),
            )
            .unwrap();
            root.present().unwrap();
        }
        (0..w as usize)
            .filter(|&x| (0..h as usize).any(|y| buf[(y * w as usize + x) * 3] < 128))
            .collect()
    }

    #[test]
    fn glyphs_keep_their_left_side_bearing() {
        let regular = FontRef::try_from_slice(dejavu::sans::regular()).unwrap();
        let font = regular.as_scaled(40.0);
        let lsb = |c| font.h_side_bearing(font.glyph_id(c));
        // An apostrophe alone starts at its bearing, not at the pen (where plotters put it).
        let quote = ink_columns("'");
        assert!(lsb('\'') >= 3.0, "{}", lsb('\''));
        assert!(
            (quote[0] as f32 - lsb('\'')).abs() <= 1.0,
            "{quote:?} against {}",
            lsb('\'')
        );
        // In f'(z) the prime's ink starts after the f's advance plus its bearing: a column
        // of white between the f and the prime.
        let f = ink_columns("f");
        let fq = ink_columns("f'");
        let f_end = *f.last().unwrap();
        let prime_start = fq.iter().copied().find(|&x| x > f_end).unwrap();
        assert!(prime_start > f_end + 1, "the prime touches the f: {fq:?}");
    }
}
