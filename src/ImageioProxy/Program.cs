var builder = WebApplication.CreateBuilder(args);
var app = builder.Build();
app.MapGet("/info/", () => Results.Json(new { version = "0.1.0" }));
app.Run();

/// <summary>Entry point, visible to tests.</summary>
public partial class Program;
