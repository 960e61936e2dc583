/// The page: Page/index.html with Page/style.css and Page/app.js inlined
/// (one request, so the token in its URL covers all of it). The files are
/// embedded in the binary at build time (SwiftPM's embedInCode): no bundle to
/// ship beside the executable, nothing fetched at run time.
enum WebChatPage {
    static let html: String = {
        let page = String(decoding: PackageResources.index_html, as: UTF8.self)
        return page
            .replacingOccurrences(of: "/*STYLE*/", with: String(decoding: PackageResources.style_css, as: UTF8.self))
            .replacingOccurrences(of: "/*SCRIPT*/", with: String(decoding: PackageResources.app_js, as: UTF8.self))
    }()
}
