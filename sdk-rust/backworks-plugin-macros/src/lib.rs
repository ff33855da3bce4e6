//! `#[async_trait]` for the Backworks plugin SDK.
//!
//! Rust traits used as trait objects cannot hold `async fn` directly, so this
//! attribute rewrites every `async fn` of a trait definition or an impl block into
//! an ordinary `fn` that returns a boxed future, the same desugaring as the
//! well-known `async-trait` crate:
//!
//! ```text
//! async fn process(&self, data: &str) -> PluginResult<String> { body }
//! ```
//!
//! becomes
//!
//! ```text
//! fn process<'async_trait>(&'async_trait self, data: &'async_trait str)
//!     -> Pin<Box<dyn Future<Output = PluginResult<String>> + Send + 'async_trait>>
//! where Self: 'async_trait
//! { Box::pin(async move { let __ret: PluginResult<String> = { body }; __ret }) }
//! ```
//!
//! Every elided reference lifetime in the arguments (and every `'_`) becomes
//! `'async_trait`, and every lifetime or type parameter the method declares is
//! bounded by it, so the future may borrow all its arguments. The same rewrite is
//! applied to the trait and to each impl, which is why their signatures agree.
//! `#[async_trait(?Send)]` drops the `Send` bound from the futures.
//!
//! Written against the compiler's built-in `proc_macro` API only (no `syn`, no
//! `quote`): the crate must build without crates.io. It therefore understands the
//! shapes that occur in trait methods, not every corner of Rust's grammar: an
//! `impl Trait` argument or a path type with a hidden elided lifetime (`Cow<str>`
//! instead of `Cow<'_, str>`) is left as written, and the compiler then explains
//! what is missing.

#![warn(missing_docs)]

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use std::str::FromStr;

/// The lifetime every future produced by the rewrite is bounded by.
const LIFETIME: &str = "async_trait";

/// Rewrites the `async fn`s of a trait definition or an impl block into methods
/// returning `Pin<Box<dyn Future<Output = T> + Send + 'async_trait>>`.
///
/// Use it on the `impl BackworksPlugin for ...` block of a plugin (and on your own
/// traits with async methods). `#[async_trait(?Send)]` makes futures that are not
/// `Send`; the plugin trait needs `Send` ones.
#[proc_macro_attribute]
pub fn async_trait(args: TokenStream, input: TokenStream) -> TokenStream {
    let send = match parse_args(args) {
        Ok(send) => send,
        Err(error) => return error.into_tokens(),
    };
    match expand(input, send) {
        Ok(tokens) => tokens,
        Err(error) => error.into_tokens(),
    }
}

struct Error {
    message: String,
    span: Span,
}

impl Error {
    fn new(span: Span, message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            span,
        }
    }

    /// `compile_error!("...");`, pointing at the offending token.
    fn into_tokens(self) -> TokenStream {
        let mut literal = Literal::string(&self.message);
        literal.set_span(self.span);
        let mut bang = Punct::new('!', Spacing::Alone);
        bang.set_span(self.span);
        let mut semi = Punct::new(';', Spacing::Alone);
        semi.set_span(self.span);
        let mut group = Group::new(
            Delimiter::Parenthesis,
            TokenStream::from(TokenTree::Literal(literal)),
        );
        group.set_span(self.span);
        TokenStream::from_iter([
            TokenTree::Ident(Ident::new("compile_error", self.span)),
            TokenTree::Punct(bang),
            TokenTree::Group(group),
            TokenTree::Punct(semi),
        ])
    }
}

/// `()` means `Send` futures; `(?Send)` means futures without the bound.
fn parse_args(args: TokenStream) -> Result<bool, Error> {
    let tokens: Vec<TokenTree> = args.into_iter().collect();
    match tokens.as_slice() {
        [] => Ok(true),
        [TokenTree::Punct(q), TokenTree::Ident(send)]
            if q.as_char() == '?' && send.to_string() == "Send" =>
        {
            Ok(false)
        }
        [first, ..] => Err(Error::new(
            first.span(),
            "#[async_trait] takes no arguments, or `?Send` for futures that are not Send",
        )),
    }
}

fn expand(input: TokenStream, send: bool) -> Result<TokenStream, Error> {
    let mut tokens: Vec<TokenTree> = input.into_iter().collect();
    let is_item = tokens
        .iter()
        .any(|t| is_ident(t, "impl") || is_ident(t, "trait"));
    let body = match tokens.last() {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace && is_item => g.clone(),
        _ => {
            let span = tokens.first().map_or_else(Span::call_site, TokenTree::span);
            return Err(Error::new(
                span,
                "#[async_trait] applies to a trait definition or an impl block",
            ));
        }
    };
    let mut group = Group::new(Delimiter::Brace, rewrite_items(body.stream(), send)?);
    group.set_span(body.span());
    *tokens.last_mut().expect("checked above") = TokenTree::Group(group);
    Ok(tokens.into_iter().collect())
}

/// Rewrites each `async fn` among the items of a trait or impl body.
fn rewrite_items(body: TokenStream, send: bool) -> Result<TokenStream, Error> {
    let tokens: Vec<TokenTree> = body.into_iter().collect();
    let mut out: Vec<TokenTree> = Vec::with_capacity(tokens.len());
    let mut start = 0;
    while start < tokens.len() {
        match fn_keyword(&tokens, start) {
            Some(fn_at) => {
                let end = fn_item_end(&tokens, fn_at)?;
                let item = &tokens[start..end];
                let async_at = (start..fn_at).find(|&i| is_ident(&tokens[i], "async"));
                match async_at {
                    Some(a) => out.extend(rewrite_async_fn(item, a - start, fn_at - start, send)?),
                    None => out.extend(item.iter().cloned()),
                }
                start = end;
            }
            None => {
                let end = other_item_end(&tokens, start);
                out.extend(tokens[start..end].iter().cloned());
                start = end;
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The index of `fn` when the item starting at `start` is a function.
fn fn_keyword(tokens: &[TokenTree], start: usize) -> Option<usize> {
    let mut i = skip_attributes(tokens, start);
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(id) => match id.to_string().as_str() {
                "fn" => return Some(i),
                "pub" => {
                    i += 1;
                    if matches!(tokens.get(i), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
                    {
                        i += 1;
                    }
                }
                "default" | "const" | "async" | "unsafe" | "extern" => i += 1,
                _ => return None,
            },
            TokenTree::Literal(_) => i += 1, // the ABI string of `extern "C" fn`
            _ => return None,
        }
    }
    None
}

/// Skips `#[...]` and `#![...]` attributes.
fn skip_attributes(tokens: &[TokenTree], mut i: usize) -> usize {
    loop {
        if !is_punct(tokens.get(i), '#') {
            return i;
        }
        let mut j = i + 1;
        if is_punct(tokens.get(j), '!') {
            j += 1;
        }
        match tokens.get(j) {
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => i = j + 1,
            _ => return i,
        }
    }
}

/// One past the body (or the `;`) of the function whose `fn` is at `fn_at`.
fn fn_item_end(tokens: &[TokenTree], fn_at: usize) -> Result<usize, Error> {
    let mut depth = 0usize;
    let mut seen_params = false;
    for i in fn_at + 1..tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
            TokenTree::Punct(p) if p.as_char() == '>' && !is_arrow_tail(tokens, i) => {
                depth = depth.saturating_sub(1)
            }
            TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis && depth == 0 => {
                seen_params = true
            }
            TokenTree::Group(g)
                if g.delimiter() == Delimiter::Brace && depth == 0 && seen_params =>
            {
                return Ok(i + 1)
            }
            TokenTree::Punct(p) if p.as_char() == ';' && depth == 0 => return Ok(i + 1),
            _ => {}
        }
    }
    Err(Error::new(
        tokens[fn_at].span(),
        "#[async_trait] could not find the end of this function",
    ))
}

/// One past the end of a non-function item: its `;`, or the braces of `mac! {}`.
fn other_item_end(tokens: &[TokenTree], start: usize) -> usize {
    for i in start..tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(p) if p.as_char() == ';' => return i + 1,
            TokenTree::Group(g)
                if g.delimiter() == Delimiter::Brace
                    && i > start
                    && is_punct(tokens.get(i - 1), '!') =>
            {
                return i + 1
            }
            _ => {}
        }
    }
    tokens.len()
}

/// True when the `>` at `i` is the second half of `->`.
fn is_arrow_tail(tokens: &[TokenTree], i: usize) -> bool {
    i > 0
        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '-' && p.spacing() == Spacing::Joint)
}

fn is_ident(token: &TokenTree, name: &str) -> bool {
    matches!(token, TokenTree::Ident(id) if id.to_string() == name)
}

fn is_punct(token: Option<&TokenTree>, c: char) -> bool {
    matches!(token, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

fn lifetime(name: &str, span: Span) -> [TokenTree; 2] {
    let mut tick = Punct::new('\'', Spacing::Joint);
    tick.set_span(span);
    [
        TokenTree::Punct(tick),
        TokenTree::Ident(Ident::new(name, span)),
    ]
}

fn tokens(source: &str) -> TokenStream {
    TokenStream::from_str(source).expect("the macro's own token text parses")
}

/// The rewrite of one `async fn` item (`item`, with `async` at `async_at` and `fn`
/// at `fn_at`, both relative to the item).
fn rewrite_async_fn(
    item: &[TokenTree],
    async_at: usize,
    fn_at: usize,
    send: bool,
) -> Result<Vec<TokenTree>, Error> {
    let span = item[fn_at].span();
    let name = match item.get(fn_at + 1) {
        Some(TokenTree::Ident(id)) => id.clone(),
        _ => return Err(Error::new(span, "expected a function name after `fn`")),
    };

    // Generic parameters, if any, between `<` and its matching `>`.
    let mut i = fn_at + 2;
    let mut generics: Vec<TokenTree> = Vec::new();
    if is_punct(item.get(i), '<') {
        let mut depth = 0usize;
        loop {
            let Some(t) = item.get(i) else {
                return Err(Error::new(
                    span,
                    "unbalanced `<` in the generics of this function",
                ));
            };
            match t {
                TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
                TokenTree::Punct(p) if p.as_char() == '>' && !is_arrow_tail(item, i) => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                break;
            }
            if i > fn_at + 2 {
                generics.push(t.clone());
            }
            i += 1;
        }
        i += 1;
    }
    let params = match item.get(i) {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => g.clone(),
        _ => {
            return Err(Error::new(
                span,
                "expected the parameter list of this function",
            ))
        }
    };
    i += 1;

    // `-> Ret`, then an optional `where` clause, then the body or `;`.
    let last = item.len() - 1;
    let mut ret: Vec<TokenTree> = Vec::new();
    let mut where_clause: Vec<TokenTree> = Vec::new();
    if is_punct(item.get(i), '-') && is_punct(item.get(i + 1), '>') {
        i += 2;
        let mut depth = 0usize;
        while i < last {
            match &item[i] {
                TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
                TokenTree::Punct(p) if p.as_char() == '>' && !is_arrow_tail(item, i) => {
                    depth = depth.saturating_sub(1)
                }
                t if depth == 0 && is_ident(t, "where") => break,
                _ => {}
            }
            ret.push(item[i].clone());
            i += 1;
        }
    }
    if i < last && is_ident(&item[i], "where") {
        where_clause.extend(item[i + 1..last].iter().cloned());
    }
    if ret.is_empty() {
        ret.extend(tokens("()"));
    }

    let mut out: Vec<TokenTree> = Vec::new();
    out.extend(
        item[..fn_at]
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != async_at)
            .map(|(_, t)| t.clone()),
    );
    out.push(item[fn_at].clone());
    out.push(TokenTree::Ident(name));

    // <'async_trait, declared...>
    out.push(TokenTree::Punct(Punct::new('<', Spacing::Alone)));
    out.extend(lifetime(LIFETIME, span));
    if !generics.is_empty() {
        out.push(TokenTree::Punct(Punct::new(',', Spacing::Alone)));
        out.extend(generics.iter().cloned());
    }
    out.push(TokenTree::Punct(Punct::new('>', Spacing::Alone)));

    let mut new_params = Group::new(
        Delimiter::Parenthesis,
        rewrite_params(params.stream(), span),
    );
    new_params.set_span(params.span());
    out.push(TokenTree::Group(new_params));

    // -> Pin<Box<dyn Future<Output = Ret> + Send + 'async_trait>>
    out.extend(tokens(
        "-> ::core::pin::Pin<::std::boxed::Box<dyn ::core::future::Future<Output =",
    ));
    out.extend(ret.iter().cloned());
    out.push(TokenTree::Punct(Punct::new('>', Spacing::Alone)));
    if send {
        out.extend(tokens("+ ::core::marker::Send"));
    }
    out.push(TokenTree::Punct(Punct::new('+', Spacing::Alone)));
    out.extend(lifetime(LIFETIME, span));
    out.extend(tokens(">>"));

    // where <existing>, 'a: 'async_trait, T: 'async_trait, Self: 'async_trait
    out.push(TokenTree::Ident(Ident::new("where", span)));
    if !where_clause.is_empty() {
        let trailing_comma = is_punct(where_clause.last(), ',');
        out.extend(where_clause);
        if !trailing_comma {
            out.push(TokenTree::Punct(Punct::new(',', Spacing::Alone)));
        }
    }
    for param in split_commas(&generics) {
        let bounded: Vec<TokenTree> = match param.as_slice() {
            // Call-site spans: the bounds are the macro's, not the user's (lints
            // such as clippy's multiple_bound_locations then leave them alone).
            [TokenTree::Punct(tick), TokenTree::Ident(id), ..] if tick.as_char() == '\'' => {
                lifetime(&id.to_string(), Span::call_site()).to_vec()
            }
            [first, ..] if is_ident(first, "const") => continue,
            [TokenTree::Ident(id), ..] => vec![TokenTree::Ident(Ident::new(
                &id.to_string(),
                Span::call_site(),
            ))],
            _ => continue,
        };
        out.extend(bounded);
        out.push(TokenTree::Punct(Punct::new(':', Spacing::Alone)));
        out.extend(lifetime(LIFETIME, span));
        out.push(TokenTree::Punct(Punct::new(',', Spacing::Alone)));
    }
    out.push(TokenTree::Ident(Ident::new("Self", span)));
    out.push(TokenTree::Punct(Punct::new(':', Spacing::Alone)));
    out.extend(lifetime(LIFETIME, span));

    match &item[last] {
        TokenTree::Group(body) if body.delimiter() == Delimiter::Brace => {
            // { Box::pin(async move { let __ret: Ret = { body }; __ret }) }
            let mut inner: Vec<TokenTree> = tokens("let __ret :").into_iter().collect();
            inner.extend(ret.iter().cloned());
            inner.push(TokenTree::Punct(Punct::new('=', Spacing::Alone)));
            inner.push(TokenTree::Group(body.clone()));
            inner.extend(tokens("; #[allow(unreachable_code)] __ret"));
            let mut block = Group::new(Delimiter::Brace, inner.into_iter().collect());
            block.set_span(body.span());
            let mut future: Vec<TokenTree> = tokens("async move").into_iter().collect();
            future.push(TokenTree::Group(block));
            let mut call: Vec<TokenTree> = tokens("::std::boxed::Box::pin").into_iter().collect();
            call.push(TokenTree::Group(Group::new(
                Delimiter::Parenthesis,
                future.into_iter().collect(),
            )));
            let mut outer = Group::new(Delimiter::Brace, call.into_iter().collect());
            outer.set_span(body.span());
            out.push(TokenTree::Group(outer));
        }
        semicolon => out.push(semicolon.clone()),
    }
    Ok(out)
}

/// Splits at top-level commas (commas inside `<...>` do not count).
fn split_commas(tokens: &[TokenTree]) -> Vec<Vec<TokenTree>> {
    let mut parts = vec![Vec::new()];
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
            TokenTree::Punct(p) if p.as_char() == '>' && !is_arrow_tail(tokens, i) => {
                depth = depth.saturating_sub(1)
            }
            TokenTree::Punct(p) if p.as_char() == ',' && depth == 0 => {
                parts.push(Vec::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(t.clone());
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Gives the receiver and every elided lifetime in the argument types `'async_trait`.
fn rewrite_params(params: TokenStream, span: Span) -> TokenStream {
    let tokens: Vec<TokenTree> = params.into_iter().collect();
    let mut out: Vec<TokenTree> = Vec::new();
    for (n, param) in split_commas(&tokens).into_iter().enumerate() {
        if n > 0 {
            out.push(TokenTree::Punct(Punct::new(',', Spacing::Alone)));
        }
        let start = skip_attributes(&param, 0);
        out.extend(param[..start].iter().cloned());
        let rest = &param[start..];
        if is_ref_receiver(rest) {
            out.extend(elide_lifetimes(rest, span));
            continue;
        }
        match type_colon(rest) {
            Some(colon) => {
                out.extend(rest[..=colon].iter().cloned());
                out.extend(elide_lifetimes(&rest[colon + 1..], span));
            }
            None => out.extend(rest.iter().cloned()),
        }
    }
    out.into_iter().collect()
}

/// `&self`, `&mut self`, `&'a self`, `&'a mut self`.
fn is_ref_receiver(param: &[TokenTree]) -> bool {
    if !is_punct(param.first(), '&') {
        return false;
    }
    param.iter().skip(1).any(|t| is_ident(t, "self"))
        && param
            .iter()
            .skip(1)
            .all(|t| matches!(t, TokenTree::Ident(_)) || is_punct(Some(t), '\''))
}

/// The `:` between an argument's pattern and its type (not half of a `::`).
fn type_colon(param: &[TokenTree]) -> Option<usize> {
    (0..param.len()).find(|&i| {
        matches!(&param[i], TokenTree::Punct(p) if p.as_char() == ':' && p.spacing() == Spacing::Alone)
            && !matches!(i.checked_sub(1).map(|j| &param[j]), Some(TokenTree::Punct(p)) if p.as_char() == ':')
    })
}

/// `&T` becomes `&'async_trait T` and `'_` becomes `'async_trait`, also inside
/// brackets and generic arguments, but not inside `Fn(...)` sugar, whose elided
/// lifetimes mean "for any lifetime".
fn elide_lifetimes(tokens: &[TokenTree], span: Span) -> Vec<TokenTree> {
    let mut out = Vec::with_capacity(tokens.len() + 2);
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match t {
            TokenTree::Punct(p) if p.as_char() == '&' => {
                let mut amp = Punct::new('&', Spacing::Alone);
                amp.set_span(p.span());
                out.push(TokenTree::Punct(amp));
                if !is_punct(tokens.get(i + 1), '\'') {
                    out.extend(lifetime(LIFETIME, span));
                }
            }
            TokenTree::Punct(p)
                if p.as_char() == '\''
                    && matches!(tokens.get(i + 1), Some(TokenTree::Ident(id)) if id.to_string() == "_") =>
            {
                out.extend(lifetime(LIFETIME, span));
                i += 1;
            }
            TokenTree::Group(g) => {
                let fn_sugar = i > 0
                    && ["Fn", "FnMut", "FnOnce"]
                        .iter()
                        .any(|f| is_ident(&tokens[i - 1], f));
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                let stream = if fn_sugar {
                    g.stream()
                } else {
                    elide_lifetimes(&inner, span).into_iter().collect()
                };
                let mut group = Group::new(g.delimiter(), stream);
                group.set_span(g.span());
                out.push(TokenTree::Group(group));
            }
            _ => out.push(t.clone()),
        }
        i += 1;
    }
    out
}
