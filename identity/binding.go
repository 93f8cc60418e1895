package identity

// Binding is one directory entry for an identity value: the customer holding
// it, and the application the identity was bound through (AppType and AppID
// both "" when none). An openid always names its application; a phone or
// unionid may; a thirdId never does.
//
// It lives here, not in the directory or the matcher, because the directory
// returns it and resolution reads it, and neither may import the other's
// internals.
type Binding struct {
	CustomerID int64
	AppType    string
	AppID      string
}
