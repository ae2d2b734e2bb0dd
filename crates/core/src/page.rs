//! Cursor paging: fetch one row more than the page holds to know whether another follows.

/// Splits `items`, fetched with a limit of `limit + 1`, into a page of at most
/// `limit` and the cursor of the next page (the last item's key), if there is one.
pub fn split<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(key);
        (items, next)
    } else {
        (items, None)
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_full_fetch_yields_a_cursor_and_a_short_one_does_not() {
        assert_eq!(
            split(vec![1, 2, 3], 2, |n| n.to_string()),
            (vec![1, 2], Some("2".into()))
        );
        assert_eq!(split(vec![1, 2], 2, |n| n.to_string()), (vec![1, 2], None));
        assert_eq!(split(Vec::<i32>::new(), 2, |n| n.to_string()), (vec![], None));
    }
}
